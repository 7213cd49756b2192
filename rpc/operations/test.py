"""Diagnostics: the round trip that clients and extensions use to prove the path works."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from rpc.registry import CLIENTS_ONLY, OPERATIONS, OpContext


@OPERATIONS.register("query:test.ping.v1", dict[str, Any])
def ping(ctx: OpContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Echo the payload back."""
    return {"echo": payload}


class Sleep(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = msgspec.field(default=0.1)


@OPERATIONS.register("query:test.sleep.v1", Sleep, callers=CLIENTS_ONLY)
async def sleep(ctx: OpContext, inp: Sleep) -> dict[str, float]:
    """Answer after ``seconds`` (at most 10): a slow request, for tests of concurrency."""
    await asyncio.sleep(max(0.0, min(inp.seconds, 10.0)))
    return {"slept": inp.seconds}
