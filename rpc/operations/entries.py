"""Entry operations: list (filtered, keyset-paginated), get, and read file bytes."""

from __future__ import annotations

import asyncio
import base64
import os

import msgspec

from daemon import errors
from daemon.locations import fs, store
from rpc.registry import OPERATIONS, OpContext

MAX_READ = 1024 * 1024


class EntryId(msgspec.Struct, forbid_unknown_fields=True):
    id: int


class Read(msgspec.Struct, forbid_unknown_fields=True):
    entry_id: int
    offset: int = 0
    length: int = 64 * 1024


class Chunk(msgspec.Struct):
    entry_id: int
    offset: int
    length: int  # bytes in data: fewer than asked only at end of file
    size: int  # the file's size now
    eof: bool
    data: str  # base64 (standard alphabet, padded)


@OPERATIONS.register("query:entries.list.v1", store.EntryQuery, library=True)
async def list_entries(ctx: OpContext, inp: store.EntryQuery) -> store.EntryPage:
    """Entries matching every given filter, one page at a time (pass next_cursor back)."""
    return await ctx.need_library().db.run(lambda c: store.list_entries(c, inp))


@OPERATIONS.register("query:entries.get.v1", EntryId, library=True)
async def get(ctx: OpContext, inp: EntryId) -> store.EntryDetail:
    """One entry with its tags."""
    return await ctx.need_library().db.run(lambda c: store.get_entry(c, inp.id))


@OPERATIONS.register("query:entries.read.v1", Read, library=True, explicit_grant=True)
async def read(ctx: OpContext, inp: Read) -> Chunk:
    """Read up to 1 MiB of a file entry's bytes (base64); never follows a symlink."""
    if inp.offset < 0 or inp.length < 0:
        raise errors.InvalidParams("offset and length must not be negative")
    if inp.length > MAX_READ:
        raise errors.TooLarge(f"length {inp.length} exceeds the limit of {MAX_READ} bytes per read",
                              {"max_length": MAX_READ})
    root, rel, kind = await ctx.need_library().db.run(lambda c: store.entry_file(c, inp.entry_id))
    if kind != "file":
        raise errors.InvalidState(f"entry {inp.entry_id} is a {kind}, not a file")

    def read_bytes() -> Chunk:
        fd = fs.open_file(root, rel)
        try:
            size = os.fstat(fd).st_size
            data = fs.read_range(fd, inp.offset, inp.length) if inp.length else b""
        except OSError as e:
            raise errors.InvalidState(f"cannot read {rel}: {e.strerror}") from None
        finally:
            os.close(fd)
        return Chunk(inp.entry_id, inp.offset, len(data), size, inp.offset + len(data) >= size,
                     base64.b64encode(data).decode())
    return await asyncio.to_thread(read_bytes)
