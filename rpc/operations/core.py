"""Daemon-level operations. Never callable by extensions."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from daemon.metrics import render
from rpc.registry import CLIENTS_ONLY, OPERATIONS, Empty, OpContext


class MetricsInput(msgspec.Struct, forbid_unknown_fields=True):
    format: Literal["prometheus", "openmetrics"] = "prometheus"


@OPERATIONS.register("query:core.status.v1", callers=CLIENTS_ONLY)
def status(ctx: OpContext, _: Empty) -> dict[str, Any]:
    """Version, pid, uptime, data dir and counts."""
    return ctx.core.status()


@OPERATIONS.register("action:core.shutdown.input.v1", callers=CLIENTS_ONLY)
def shutdown(ctx: OpContext, _: Empty) -> dict[str, Any]:
    """Stop the daemon cleanly after answering."""
    ctx.core.request_shutdown()
    return {"stopping": True}


@OPERATIONS.register("query:core.metrics.v1", MetricsInput, callers=CLIENTS_ONLY)
async def metrics(ctx: OpContext, inp: MetricsInput) -> dict[str, str]:
    """The daemon's figures as Prometheus (text 0.0.4) or OpenMetrics text."""
    snap = await ctx.core.metrics_snapshot()
    openmetrics = inp.format == "openmetrics"
    return {"format": inp.format,
            "content_type": "application/openmetrics-text; version=1.0.0; charset=utf-8"
            if openmetrics else "text/plain; version=0.0.4; charset=utf-8",
            "text": render(snap, openmetrics)}
