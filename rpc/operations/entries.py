"""Entry operations: list (filtered, keyset-paginated), get, read file bytes, content hashes."""

from __future__ import annotations

import asyncio
import base64
import os

import msgspec

from daemon import errors
from daemon.libraries.db import Database
from daemon.locations import fs, hashes, store
from rpc.registry import OPERATIONS, OpContext

MAX_READ = 1024 * 1024


class EntryId(msgspec.Struct, forbid_unknown_fields=True):
    id: int


class Read(msgspec.Struct, forbid_unknown_fields=True):
    entry_id: int
    offset: int = 0
    length: int = 64 * 1024


class HashInput(msgspec.Struct, forbid_unknown_fields=True):
    entry_ids: list[int]


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


@OPERATIONS.register("query:entries.content_hash.v1", HashInput, library=True,
                     explicit_grant=True, granted_by=("query:entries.read.v1",))
async def content_hash(ctx: OpContext, inp: HashInput) -> hashes.HashResult:
    """Full-content BLAKE3 of up to 1000 file entries, cached per file (never follows a symlink)."""
    if not 1 <= len(inp.entry_ids) <= hashes.MAX_ENTRIES:
        raise errors.InvalidParams(f"entry_ids must hold between 1 and {hashes.MAX_ENTRIES} ids")
    db = ctx.need_library().db
    return await asyncio.to_thread(hashes.content_hashes, db, inp.entry_ids)


MAX_READ_INTO = 16 * 1024 * 1024


def read_into(db: Database, entry_id: int, offset: int, buf: memoryview,
              files: fs.OpenFiles | None = None) -> int:
    """Read up to ``len(buf)`` (at most 16 MiB) bytes of a file entry at ``offset`` straight
    into ``buf``; the bytes read, 0 at or past the end. The checks of ``entries.read``
    (the caller's grant and library are checked by the dispatcher). Blocking.

    With ``files`` (one per guest job instance) the file stays open for the instance's
    next reads of the same entry: reading a file in blocks opens it once."""
    if offset < 0:
        raise errors.InvalidParams("offset must not be negative")
    key = (str(db.path), entry_id)
    hit = files.get(key) if files is not None else None
    if hit is not None:
        return _pread(hit[0], hit[1], offset, buf)
    root, rel, kind = db.run_sync(lambda c: store.entry_file(c, entry_id))
    if kind != "file":
        raise errors.InvalidState(f"entry {entry_id} is a {kind}, not a file")
    fd = fs.open_file(root, rel)
    if files is not None:
        files.put(key, fd, rel)
        return _pread(fd, rel, offset, buf)
    try:
        return _pread(fd, rel, offset, buf)
    finally:
        os.close(fd)


def _pread(fd: int, rel: str, offset: int, buf: memoryview) -> int:
    """preadv into ``buf``, at most MAX_READ_INTO bytes."""
    try:
        return os.preadv(fd, [buf[:MAX_READ_INTO]], offset) if len(buf) else 0
    except OSError as e:
        raise errors.InvalidState(f"cannot read {rel}: {e.strerror}") from None
