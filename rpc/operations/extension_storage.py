"""Extension storage: a JSON key-value store per extension and library.

The namespace is the caller's identity, never a parameter: an extension gets
its own id, so one extension cannot see another's keys. A local client (the
CLI) gets the namespace ``@client`` (not a valid extension id, so no clash);
``query:extension_storage.inspect.v1`` lets a client read any extension's keys,
and is never callable by an extension whatever its manifest says.
"""

from __future__ import annotations

from typing import Any

import msgspec

from daemon.locations import kv
from rpc.registry import CLIENTS_ONLY, OPERATIONS, OpContext

CLIENT_NAMESPACE = "@client"
_enc = msgspec.json.Encoder()


class Set(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: Any  # any JSON value


class Key(msgspec.Struct, forbid_unknown_fields=True):
    key: str


class ListKeys(msgspec.Struct, forbid_unknown_fields=True):
    prefix: str = ""
    cursor: str | None = None
    limit: int = 100


class Inspect(msgspec.Struct, forbid_unknown_fields=True):
    extension_id: str
    prefix: str = ""
    limit: int = 100


class Value(msgspec.Struct):
    key: str
    found: bool
    value: msgspec.Raw | None = None
    updated_at: float | None = None


class KeyPage(msgspec.Struct):
    keys: list[kv.KeyInfo]
    next_cursor: str | None


def namespace(ctx: OpContext) -> str:
    return ctx.caller.extension_id or CLIENT_NAMESPACE


@OPERATIONS.register("action:extension_storage.set.input.v1", Set, library=True)
async def set_value(ctx: OpContext, inp: Set) -> dict[str, object]:
    """Store a JSON value under a key (up to 256-byte keys, 1 MiB values)."""
    ns, value = namespace(ctx), _enc.encode(inp.value)
    await ctx.need_library().db.run(lambda c: kv.put(c, ns, inp.key, value))
    return {"key": inp.key, "bytes": len(value)}


@OPERATIONS.register("query:extension_storage.get.v1", Key, library=True)
async def get(ctx: OpContext, inp: Key) -> Value:
    """The value under a key (found=false if there is none)."""
    ns = namespace(ctx)
    item = await ctx.need_library().db.run(lambda c: kv.get(c, ns, inp.key))
    if item is None:
        return Value(inp.key, False)
    return Value(inp.key, True, item.value, item.updated_at)


@OPERATIONS.register("query:extension_storage.list.v1", ListKeys, library=True)
async def list_keys(ctx: OpContext, inp: ListKeys) -> KeyPage:
    """Keys (with sizes) starting with a prefix, in order, one page at a time."""
    ns = namespace(ctx)
    page, cursor = await ctx.need_library().db.run(
        lambda c: kv.keys(c, ns, inp.prefix, inp.cursor, inp.limit))
    return KeyPage(page, cursor)


@OPERATIONS.register("action:extension_storage.delete.input.v1", Key, library=True)
async def delete(ctx: OpContext, inp: Key) -> dict[str, object]:
    """Delete a key."""
    ns = namespace(ctx)
    return {"key": inp.key, "deleted": await ctx.need_library().db.run(
        lambda c: kv.delete(c, ns, inp.key))}


@OPERATIONS.register("query:extension_storage.inspect.v1", Inspect, library=True,
                     callers=CLIENTS_ONLY)
async def inspect(ctx: OpContext, inp: Inspect) -> list[kv.Item]:
    """Clients only: an extension's stored keys and values (up to 1000)."""
    limit = max(1, min(inp.limit, kv.MAX_PAGE))
    return await ctx.need_library().db.run(
        lambda c: kv.items(c, inp.extension_id, inp.prefix, limit))
