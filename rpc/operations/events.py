"""Event subscription: turns a socket connection into a stream of notifications."""

from __future__ import annotations

from typing import Any

import msgspec

from daemon import errors
from daemon.events import EVENT_KINDS
from rpc.registry import CLIENTS_ONLY, OPERATIONS, OpContext


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    kinds: list[str] | None = None
    library_id: str | None = None


@OPERATIONS.register("action:events.subscribe.input.v1", Subscribe, callers=CLIENTS_ONLY)
def subscribe(ctx: OpContext, inp: Subscribe) -> dict[str, Any]:
    """Stream events to this connection as JSON-RPC ``event`` notifications."""
    session = ctx.caller.session
    if session is None or not hasattr(session, "attach_subscription"):
        raise errors.InvalidState("events.subscribe needs a socket connection")
    if inp.kinds is not None:
        unknown = sorted(set(inp.kinds) - EVENT_KINDS)
        if unknown:
            raise errors.InvalidParams(f"unknown event kinds {unknown}",
                                       {"known": sorted(EVENT_KINDS)})
    sub = ctx.core.events.subscribe(inp.kinds, inp.library_id)
    session.attach_subscription(sub)
    return {"subscribed": True, "kinds": sorted(inp.kinds or EVENT_KINDS),
            "library_id": inp.library_id}
