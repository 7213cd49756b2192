"""Location operations: add, list, rescan and remove indexed directories. Library-scoped."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import TYPE_CHECKING, Any

import msgspec

from daemon import errors
from daemon.locations import IDENTIFY_JOB, INDEX_JOB, store
from daemon.locations.dispatch import dispatch_index
from rpc.registry import OPERATIONS, Empty, OpContext

if TYPE_CHECKING:
    from daemon.libraries.manager import Library


class AddLocation(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    name: str | None = None
    identify: bool = False  # also compute content hashes after indexing
    watch: bool = True  # keep the index in step with the disk (inotify)


class LocationId(msgspec.Struct, forbid_unknown_fields=True):
    id: int


class Watch(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    on: bool


class Rescan(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    identify: bool = False


class Added(msgspec.Struct):
    location: store.Location
    job_id: str


class Rescanned(msgspec.Struct):
    location_id: int
    job_id: str
    already_running: bool


def _active(conn: sqlite3.Connection, location_id: int, names: tuple[str, ...]) -> list[str]:
    store.require_location(conn, location_id)
    return store.active_jobs(conn, location_id, names)


def _resolve(path: str) -> str:
    if not os.path.isabs(path):
        raise errors.InvalidParams(f"a location path must be absolute, not {path!r}")
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise errors.InvalidParams(f"{path} is not a directory")
    return real


@OPERATIONS.register("action:locations.add.input.v1", AddLocation, library=True,
                     explicit_grant=True)
async def add(ctx: OpContext, inp: AddLocation) -> Added:
    """Register a directory (absolute path; locations may not nest) and start indexing it."""
    lib = ctx.need_library()
    path = await asyncio.to_thread(_resolve, inp.path)
    name = (inp.name or os.path.basename(path) or path).strip() or path
    loc_id = await lib.db.run(lambda c: store.insert_location(c, path, name, inp.watch))
    if inp.watch:
        # Watched before the first walk, so nothing created during it is missed.
        await ctx.core.watches.start(lib, loc_id)
    job_id = await dispatch_index(lib, loc_id, identify=inp.identify)
    return Added(await _described(ctx, lib, loc_id), job_id)


async def _described(ctx: OpContext, lib: Library, location_id: int) -> store.Location:
    loc = await lib.db.run(lambda c: store.get_location(c, location_id))
    return ctx.core.watches.describe(lib.id, loc)


@OPERATIONS.register("query:locations.list.v1", Empty, library=True)
async def list_locations(ctx: OpContext, _: Empty) -> list[store.Location]:
    """Every location with its entry count, indexer state and watch state."""
    lib = ctx.need_library()
    return [ctx.core.watches.describe(lib.id, loc)
            for loc in await lib.db.run(store.list_locations)]


@OPERATIONS.register("action:locations.watch.input.v1", Watch, library=True)
async def watch(ctx: OpContext, inp: Watch) -> dict[str, Any]:
    """Turn watching of a location on (watch, then rescan what changed meanwhile) or off."""
    lib = ctx.need_library()
    await lib.db.run(lambda c: store.set_watch(c, inp.id, inp.on))
    job_id = None
    if inp.on:
        await ctx.core.watches.start(lib, inp.id)
        job_id = await ctx.core.watches.rescan(lib, inp.id)
    else:
        await ctx.core.watches.stop(lib.id, inp.id)
    return {"location": await _described(ctx, lib, inp.id), "job_id": job_id}


@OPERATIONS.register("action:locations.rescan.input.v1", Rescan, library=True)
async def rescan(ctx: OpContext, inp: Rescan) -> Rescanned:
    """Index a location again (incremental); an indexer job already active is returned instead."""
    lib = ctx.need_library()
    active = await lib.db.run(lambda c: _active(c, inp.id, (INDEX_JOB,)))
    if active:
        return Rescanned(inp.id, active[0], True)
    return Rescanned(inp.id, await dispatch_index(lib, inp.id, identify=inp.identify), False)


@OPERATIONS.register("action:locations.remove.input.v1", LocationId, library=True)
async def remove(ctx: OpContext, inp: LocationId) -> dict[str, Any]:
    """Forget a location: its indexer job is cancelled, its entries and their tags deleted."""
    lib = ctx.need_library()
    await ctx.core.watches.stop(lib.id, inp.id)
    for job_id in await lib.db.run(lambda c: _active(c, inp.id, (INDEX_JOB, IDENTIFY_JOB))):
        try:
            await lib.jobs.cancel(job_id)
        except errors.InvalidState:
            pass  # it ended meanwhile
    n = await lib.db.run(lambda c: store.delete_location(c, inp.id))
    return {"removed": inp.id, "entries": n}


