"""Importing this package registers every operation in ``rpc.registry.OPERATIONS``."""

from rpc.operations import core, events, extensions, jobs, libraries, test  # noqa: F401
