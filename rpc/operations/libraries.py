"""Library operations."""

from __future__ import annotations

import msgspec

from daemon import errors
from daemon.libraries.manager import CheckResult, LibraryInfo
from rpc.registry import CLIENTS_ONLY, OPERATIONS, Empty, OpContext


class LibraryId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class CreateLibrary(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@OPERATIONS.register("query:libraries.list.v1")
async def list_libraries(ctx: OpContext, _: Empty) -> list[LibraryInfo]:
    """Every library, oldest first, with its state (an extension sees those its manifest grants)."""
    return [info for info in ctx.core.libraries.infos() if ctx.caller.sees_library(info.id)]


@OPERATIONS.register("query:libraries.info.v1", LibraryId)
async def info(ctx: OpContext, inp: LibraryId) -> LibraryInfo:
    """One library."""
    if not ctx.caller.sees_library(inp.id):
        raise errors.PermissionDenied(f"{ctx.caller.describe()} has no access to library {inp.id}")
    return ctx.core.libraries.info(inp.id)


@OPERATIONS.register("query:libraries.check.v1", LibraryId, callers=CLIENTS_ONLY)
async def check(ctx: OpContext, inp: LibraryId) -> CheckResult:
    """SQLite's integrity check of a library's database; a damaged library is isolated."""
    return await ctx.core.libraries.check(inp.id)


@OPERATIONS.register("action:libraries.create.input.v1", CreateLibrary, callers=CLIENTS_ONLY)
async def create(ctx: OpContext, inp: CreateLibrary) -> LibraryInfo:
    """Create a library (a new SQLite database)."""
    return (await ctx.core.libraries.create_library(inp.name)).info()


@OPERATIONS.register("action:libraries.delete.input.v1", LibraryId, callers=CLIENTS_ONLY)
async def delete(ctx: OpContext, inp: LibraryId) -> dict[str, str]:
    """Delete a library and its database."""
    await ctx.core.libraries.delete_library(inp.id)
    return {"deleted": inp.id}
