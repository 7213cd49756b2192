"""Diagnostics: the round trip that clients and extensions use to prove the path works."""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing import Any

from rpc.registry import OPERATIONS

if TYPE_CHECKING:
    from rpc.dispatch import OpContext


@OPERATIONS.register("query:test.ping.v1", dict[str, Any])
def ping(ctx: OpContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Echo the payload back."""
    return {"echo": payload}
