"""The peer of row 1: an Extism python-sdk host function with JSON in and out.

No ``from __future__ import annotations`` here: extism reads the annotations
with ``typing.get_type_hints`` to pick its JSON codec.
"""

import typing
from collections.abc import Callable
from typing import Any

import extism  # type: ignore[import-untyped]

from bench import wat


@extism.host_fn(name="ping", namespace="extism:host/user")  # type: ignore[untyped-decorator]
def ping(payload: typing.Annotated[dict[str, Any], extism.Json]
         ) -> typing.Annotated[dict[str, Any], extism.Json]:
    """What an Extism host exposes for ``query:test.ping.v1``."""
    return {"echo": payload}


def loop() -> Callable[[int], int]:
    """``run(n)``: the Extism guest loop calling ``ping`` n times; returns bad replies (0)."""
    # extism.Plugin wants bytes, not the bytearray wat2wasm returns.
    plugin = extism.Plugin(wat.compile_wat(wat.extism_ping_loop()), functions=[ping])
    n_bytes = 8

    def run(n: int) -> int:
        try:
            plugin.call("run", n.to_bytes(n_bytes, "little"))
        except extism.Error as e:  # a non-zero return (bad replies) is reported as an error
            raise RuntimeError(f"extism guest failed: {e}") from None
        return 0
    return run


def version() -> str:
    return str(extism.extism_version())
