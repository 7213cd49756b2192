"""Full-content BLAKE3 hashes of file entries, cached per file in the library database.

A hash is stored per file (``dev``, ``inode``) together with the ``size``,
``mtime_ns`` and ``ctime_ns`` it was computed for; it is used again only while
the file on disk still has that inode, size, mtime and ctime, so a second
request reads no bytes. (ctime, which no program can set, guards against a
deleted file's inode reused by a copy with the same size and a preserved
mtime; a rename also changes it, so a moved file is read once more.)
Hard links (one inode) are hashed once.

An entry is answered with an error instead of a hash when it is not a regular
file, cannot be opened (gone, unreadable, a symlink: never followed), or no
longer matches what the index says about it (size, mtime or inode changed
since indexing): the caller should skip it until the next rescan.

Large files are read in 4 MiB blocks into one reused buffer and hashed with
the ``blake3`` library's multithreaded mode; no ``mmap`` (a file truncated
under a mapping would kill the daemon with SIGBUS).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Sequence

import blake3
import msgspec

from daemon import errors
from daemon.libraries.db import Database, transaction
from daemon.locations import fs

MAX_ENTRIES = 1000
BLOCK = 4 * 1024 * 1024
# Below this a file is hashed on one thread: starting blake3's pool costs more than it saves.
THREADED_FROM = 1024 * 1024


class HashError(msgspec.Struct):
    code: int
    message: str


class ContentHash(msgspec.Struct):
    entry_id: int
    hash: str | None  # 64 lower-case hex digits: BLAKE3 of the whole content
    size: int
    dev: int
    inode: int
    cached: bool  # taken from the index without reading the file
    error: HashError | None = None


class HashResult(msgspec.Struct):
    hashes: list[ContentHash]
    bytes_read: int


class _Row(msgspec.Struct):
    entry_id: int
    root: str
    path: str
    kind: str
    size: int
    mtime_ns: int
    dev: int
    inode: int
    c_size: int | None
    c_mtime_ns: int | None
    c_ctime_ns: int | None
    c_hash: str | None


def _rows(conn: sqlite3.Connection, entry_ids: Sequence[int]) -> dict[int, _Row]:
    marks = ", ".join("?" * len(entry_ids))
    sql = (f"SELECT e.id, l.path, e.path, e.kind, e.size, e.mtime_ns, e.dev, e.inode, "
           f"h.size, h.mtime_ns, h.ctime_ns, h.hash "
           f"FROM entries e JOIN locations l ON l.id = e.location_id "
           f"LEFT JOIN content_hashes h ON h.dev = e.dev AND h.inode = e.inode "
           f"WHERE e.id IN ({marks}) AND e.missing = 0")
    return {r[0]: _Row(*r) for r in conn.execute(sql, list(entry_ids))}


Fresh = tuple[int, int, int, int, int, str]  # dev, inode, size, mtime_ns, ctime_ns, hash


def _store(conn: sqlite3.Connection, done: list[Fresh]) -> None:
    now = time.time()
    with transaction(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO content_hashes "
            "(dev, inode, size, mtime_ns, ctime_ns, hash, hashed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(*d, now) for d in done])


def hash_fd(fd: int, size: int, buf: memoryview) -> str:
    """BLAKE3 hex digest of ``size`` bytes of ``fd``; InvalidState if the file ends early."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if size >= THREADED_FROM else 1)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [buf[:min(len(buf), size - offset)]], offset)
        if n == 0:
            raise errors.InvalidState("the file shrank while it was hashed")
        h.update(buf[:n])
        offset += n
    return h.hexdigest()


def _changed(st: os.stat_result, row: _Row) -> str | None:
    if st.st_ino != row.inode or st.st_dev != row.dev:
        return "it was replaced since it was indexed (another inode); rescan the location"
    if st.st_size != row.size or st.st_mtime_ns != row.mtime_ns:
        return "it changed since it was indexed (size or mtime); rescan the location"
    return None


def content_hashes(db: Database, entry_ids: Sequence[int]) -> HashResult:
    """The full-content hash of each entry (in order), or why there is none. Blocking:
    call on a worker thread, never on the event loop or the database thread."""
    if not 1 <= len(entry_ids) <= MAX_ENTRIES:
        raise errors.InvalidParams(f"entry_ids must hold between 1 and {MAX_ENTRIES} ids")
    rows = db.run_sync(lambda c: _rows(c, entry_ids))
    job = _Hashing()
    dirs: dict[str, fs.Dirs] = {}
    try:
        out = [job.one(entry_id, rows.get(entry_id), dirs) for entry_id in entry_ids]
    finally:
        for d in dirs.values():
            d.close()
    if job.fresh:
        done = list(job.fresh.values())
        db.run_sync(lambda c: _store(c, done))
    return HashResult(out, job.read)


class _Hashing:
    """One call's state: hashes computed so far (by file), bytes read, the read buffer."""

    def __init__(self) -> None:
        self.fresh: dict[tuple[int, int], Fresh] = {}
        self.read = 0
        self.buf = memoryview(bytearray(0))

    def one(self, entry_id: int, row: _Row | None, dirs: dict[str, fs.Dirs]) -> ContentHash:
        if row is None:
            return _failed(entry_id, 0, 0, 0, errors.NotFound(f"no entry {entry_id}"))
        if row.kind != "file":
            return _failed(entry_id, row.size, row.dev, row.inode, errors.InvalidState(
                f"{row.path} is a {row.kind}, not a file"))
        d = dirs.get(row.root)
        if d is None:
            d = dirs[row.root] = fs.Dirs(row.root)
        try:
            return self._hash(entry_id, row, d)
        except errors.SdError as e:
            return _failed(entry_id, row.size, row.dev, row.inode, e)
        except OSError as e:
            return _failed(entry_id, row.size, row.dev, row.inode, errors.InvalidState(
                f"cannot read {row.path}: {e.strerror}", {"path": row.path}))

    def _hash(self, entry_id: int, row: _Row, d: fs.Dirs) -> ContentHash:
        key = (row.dev, row.inode)
        if key in self.fresh or row.c_hash is not None:
            # Perhaps known: the file's status alone decides, without opening it.
            st = d.lstat(row.path)  # no symlink followed, at any level
            if stat.S_ISLNK(st.st_mode):
                raise errors.InvalidState(f"{row.path} is (or passes through) a symbolic link; "
                                          "not followed", {"path": row.path})
            why = _changed(st, row)
            if why is not None:
                raise errors.InvalidState(f"{row.path}: {why}", {"path": row.path})
            if key in self.fresh:
                return ContentHash(entry_id, self.fresh[key][5], row.size, row.dev, row.inode,
                                   True)
            if stat.S_ISREG(st.st_mode) and (row.c_size, row.c_mtime_ns, row.c_ctime_ns) == (
                    st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                return ContentHash(entry_id, row.c_hash, row.size, row.dev, row.inode, True)
        fd, st = d.open_file(row.path)  # O_NOFOLLOW: a symlink is refused here too
        try:
            why = _changed(st, row)
            if why is not None:
                raise errors.InvalidState(f"{row.path}: {why}", {"path": row.path})
            want = min(BLOCK, row.size)
            if len(self.buf) < want:
                self.buf = memoryview(bytearray(want))
            digest = hash_fd(fd, row.size, self.buf)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            raise errors.InvalidState(f"{row.path} changed while it was hashed",
                                      {"path": row.path})
        self.read += row.size
        self.fresh[key] = (row.dev, row.inode, row.size, row.mtime_ns, st.st_ctime_ns, digest)
        return ContentHash(entry_id, digest, row.size, row.dev, row.inode, False)


def _failed(entry_id: int, size: int, dev: int, inode: int, e: errors.SdError) -> ContentHash:
    return ContentHash(entry_id, None, size, dev, inode, False, HashError(e.code, e.message))

