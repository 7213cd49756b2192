"""Tag operations: create, list, apply to entries, remove from entries, delete.

Entries by tag: ``query:entries.list.v1`` with the ``tag`` filter.
"""

from __future__ import annotations

from typing import Any

import msgspec

from daemon.locations import tags
from rpc.registry import OPERATIONS, Empty, OpContext


class CreateTag(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    color: str | None = None


class TagEntries(msgspec.Struct, forbid_unknown_fields=True):
    tag: int | str  # id or name
    entry_ids: list[int]


class TagRef(msgspec.Struct, forbid_unknown_fields=True):
    tag: int | str


@OPERATIONS.register("action:tags.create.input.v1", CreateTag, library=True)
async def create(ctx: OpContext, inp: CreateTag) -> tags.Created:
    """Create a tag (idempotent by name: an existing one comes back with created=false)."""
    return await ctx.need_library().db.run(lambda c: tags.create(c, inp.name, inp.color))


@OPERATIONS.register("query:tags.list.v1", Empty, library=True)
async def list_tags(ctx: OpContext, _: Empty) -> list[tags.Tag]:
    """Every tag with the number of entries it is on."""
    return await ctx.need_library().db.run(tags.list_tags)


@OPERATIONS.register("action:tags.apply.input.v1", TagEntries, library=True)
async def apply(ctx: OpContext, inp: TagEntries) -> dict[str, Any]:
    """Put a tag on up to 1000 entries; reports new links and unknown entry ids."""
    return await ctx.need_library().db.run(lambda c: tags.apply(c, inp.tag, inp.entry_ids))


@OPERATIONS.register("action:tags.remove.input.v1", TagEntries, library=True)
async def remove(ctx: OpContext, inp: TagEntries) -> dict[str, Any]:
    """Take a tag off up to 1000 entries."""
    return await ctx.need_library().db.run(lambda c: tags.remove(c, inp.tag, inp.entry_ids))


@OPERATIONS.register("action:tags.delete.input.v1", TagRef, library=True)
async def delete(ctx: OpContext, inp: TagRef) -> dict[str, int]:
    """Delete a tag (and its links to entries)."""
    return {"deleted": await ctx.need_library().db.run(lambda c: tags.delete(c, inp.tag))}
