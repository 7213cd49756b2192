"""Importing this package registers every operation in ``rpc.registry.OPERATIONS``."""

from rpc.operations import (  # noqa: F401
    core,
    entries,
    events,
    extension_storage,
    extensions,
    jobs,
    libraries,
    locations,
    tags,
    test,
)
