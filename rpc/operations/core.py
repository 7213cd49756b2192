"""Daemon-level operations. Never callable by extensions."""

from __future__ import annotations

from typing import Any

from rpc.registry import CLIENTS_ONLY, OPERATIONS, Empty, OpContext


@OPERATIONS.register("query:core.status.v1", callers=CLIENTS_ONLY)
def status(ctx: OpContext, _: Empty) -> dict[str, Any]:
    """Version, pid, uptime, data dir and counts."""
    return ctx.core.status()


@OPERATIONS.register("action:core.shutdown.input.v1", callers=CLIENTS_ONLY)
def shutdown(ctx: OpContext, _: Empty) -> dict[str, Any]:
    """Stop the daemon cleanly after answering."""
    ctx.core.request_shutdown()
    return {"stopping": True}
