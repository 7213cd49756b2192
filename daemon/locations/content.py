"""Content identity: the ``cas_id`` of a file, and the job that computes it for a location.

The cas_id scheme (modelled on Spacedrive's ``generate_cas_id``; the guest
duplicate-finder implements the same bytes, so its ids and ours agree):

* ``size`` is the file's size in bytes; ``le64(size)`` its 8-byte little-endian form.
* size <= 100 KiB: ``BLAKE3(le64(size) || whole file)``.
* size > 100 KiB: ``BLAKE3(le64(size) || header || s0 || s1 || s2 || s3 || footer)``
  where header = bytes [0, 8 KiB), footer = the last 8 KiB, and ``s_i`` = the
  10 KiB at ``8 KiB + i * ((size - 16 KiB - 10 KiB) // 3)``: four samples
  spread evenly over the middle, the first starting right after the header
  and the last ending at most 2 bytes before the footer.
* cas_id = the first 16 hex digits (64 bits) of the BLAKE3 digest, lower case.

Large files are therefore identified by 56 KiB of content plus their size:
two large files that differ only outside the samples share a cas_id. That
is the trade Spacedrive makes too (identity, not integrity).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import blake3
import msgspec

from daemon import errors
from daemon.jobs.context import Interrupt, Interrupted, JobContext
from daemon.libraries.db import transaction
from daemon.locations import fs, store

SMALL_FILE = 100 * 1024
HEADER = FOOTER = 8 * 1024
SAMPLE = 10 * 1024
SAMPLES = 4
CAS_HEX_DIGITS = 16
BATCH = 1024  # rows fetched (and cas_ids stored, and a checkpoint written) at a time
CHUNK = 64  # rows a hashing thread takes at a time
HASH_THREADS = 2
# O_NONBLOCK: opening a FIFO swapped in for a file must not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def sample_ranges(size: int) -> list[tuple[int, int]]:
    """The (offset, length) ranges hashed after ``le64(size)``, in order."""
    if size <= SMALL_FILE:
        return [(0, size)] if size else []
    step = (size - HEADER - FOOTER - SAMPLE) // (SAMPLES - 1)
    return ([(0, HEADER)] + [(HEADER + i * step, SAMPLE) for i in range(SAMPLES)]
            + [(size - FOOTER, FOOTER)])


def cas_id_of_fd(fd: int, size: int) -> tuple[str, int]:
    """(cas_id, bytes read) of an open file of ``size`` bytes; NotFound-ish errors if it shrank."""
    h = blake3.blake3(size.to_bytes(8, "little"))
    read = 0
    for offset, length in sample_ranges(size):
        data = fs.read_range(fd, offset, length)
        if len(data) != length:
            raise errors.InvalidState("the file changed while it was hashed")
        h.update(data)
        read += length
    return h.hexdigest()[:CAS_HEX_DIGITS], read


def cas_id_of_bytes(data: bytes) -> str:
    """The cas_id of a whole file's content (reference for tests and tools)."""
    h = blake3.blake3(len(data).to_bytes(8, "little"))
    for offset, length in sample_ranges(len(data)):
        h.update(data[offset:offset + length])
    return h.hexdigest()[:CAS_HEX_DIGITS]


class IdentifyInput(msgspec.Struct, forbid_unknown_fields=True):
    location_id: int


def identify_job(ctx: JobContext, inp: IdentifyInput) -> dict[str, Any]:
    """``locations.identify``: a cas_id for every file of the location that has none."""
    return identify(ctx, inp.location_id, dict((ctx.state or {}).get("identify") or {}))


def identify(ctx: JobContext, location_id: int, state: dict[str, Any],
             extra: dict[str, Any] | None = None, progress_from: float = 0.0) -> dict[str, Any]:
    """The identify pass, resumable from ``state`` (``{"after": id, ...}``).

    ``extra`` is merged into every checkpoint (the indexer keeps its own fields there);
    progress runs from ``progress_from`` to 1. Files are hashed by ``HASH_THREADS``
    threads (reading and BLAKE3 release the GIL), each opening files through its
    current directory's fd; the next batch of rows is fetched while one is hashed.
    """
    db = ctx.db
    root = db.run_sync(lambda c: store.location_root(c, location_id))
    if "total" not in state:
        state = {"after": 0, "hashed": 0, "skipped": 0, "bytes": 0,
                 "total": db.run_sync(lambda c: store.count_unhashed(c, location_id))}
    total = max(int(state["total"]), 1)
    t0 = time.monotonic()
    local = threading.local()
    dirs: list[_DirFd] = []

    def hash_chunk(rows: list[tuple[int, str, int, int]]) -> list[_Hashed]:
        d = getattr(local, "dirs", None)
        if d is None:
            d = local.dirs = _DirFd(root)
            dirs.append(d)
        return [_hash_one(d, *row) for row in rows]

    def fetch(after: int) -> Future[list[tuple[int, str, int, int]]]:
        return db.submit(partial(store.unhashed_files, location_id=location_id, after=after,
                                 limit=BATCH))

    pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix=f"identify-{ctx.job_id[:8]}")
    try:
        rows_fut = fetch(int(state["after"]))
        while True:
            rows = rows_fut.result()
            if not rows:
                break
            rows_fut = fetch(rows[-1][0])
            chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
            done: list[tuple[str, int, int, int]] = []
            for results in pool.map(hash_chunk, chunks):
                for entry_id, _, size, mtime_ns, cas, n, warning in results:
                    if warning:
                        ctx.add_warning(warning)
                    if cas is None:
                        state["skipped"] += 1
                        continue
                    done.append((cas, entry_id, size, mtime_ns))
                    state["bytes"] += n
                    ctx.increment_bytes(n)
            db.run_sync(partial(_store_cas, location_id=location_id, done=done))
            state["hashed"] += len(done)
            state["after"] = rows[-1][0]
            ctx.increment_items(len(done))
            finished = state["hashed"] + state["skipped"]
            ctx.report_progress(progress_from + (1 - progress_from) * min(finished / total, 0.999),
                                f"hashed {state['hashed']} of {state['total']} files")
            ctx.checkpoint({**(extra or {}), "identify": state})
            if ctx.check_interrupt() is not Interrupt.CONTINUE:
                raise Interrupted()
    finally:
        pool.shutdown(wait=True)
        rows_fut.cancel()
        for d in dirs:
            d.close()
    ctx.report_progress(1.0, f"hashed {state['hashed']} files ({state['skipped']} skipped)")
    return {"hashed": state["hashed"], "skipped": state["skipped"], "bytes": state["bytes"],
            "seconds": round(time.monotonic() - t0, 3)}


# (entry id, path, size, mtime_ns, cas_id or None if skipped, bytes read, warning or None)
_Hashed = tuple[int, str, int, int, str | None, int, str | None]


def _hash_one(dirs: _DirFd, entry_id: int, path: str, size: int, mtime_ns: int) -> _Hashed:
    """One file's cas_id, if it is still the regular file that was indexed."""
    try:
        fd = dirs.open_file(path)
    except errors.SdError:
        return entry_id, path, size, mtime_ns, None, 0, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime_ns:
            return entry_id, path, size, mtime_ns, None, 0, None  # the next rescan catches up
        cas, n = cas_id_of_fd(fd, size)
    except (OSError, errors.SdError) as e:
        return (entry_id, path, size, mtime_ns, None, 0,
                f"cannot hash {path}: {getattr(e, 'message', e)}")
    finally:
        os.close(fd)
    return entry_id, path, size, mtime_ns, cas, n, None


class _DirFd:
    """Opens files of a location through the fd of their directory (opened like
    ``fs.open_dir_nofollow``: no symlink followed), keeping the last one open: rows in
    id order come a directory at a time."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.parent: str | None = None
        self.fd = -1

    def open_file(self, rel: str) -> int:
        """An fd on ``rel`` (``O_NOFOLLOW``; the caller checks it is a regular file)."""
        slash = rel.rfind("/")
        parent, name = (rel[:slash], rel[slash + 1:]) if slash >= 0 else ("", rel)
        if not name or name in (".", ".."):
            raise errors.InvalidParams(f"bad relative path {rel!r}")
        try:
            if parent != self.parent:
                self.close()
                self.fd = fs.open_dir_nofollow(self.root, parent)
                self.parent = parent
            return os.open(name, _FILE_FLAGS, dir_fd=self.fd)
        except OSError as e:
            raise errors.NotFound(f"cannot open {rel}: {e.strerror}", {"path": rel}) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.parent = -1, None


def _store_cas(conn: Any, location_id: int, done: list[tuple[str, int, int, int]]) -> None:
    store.require_location(conn, location_id)
    with transaction(conn):
        # Only if the entry still describes the file that was hashed.
        conn.executemany("UPDATE entries SET cas_id = ? WHERE id = ? AND size = ? AND mtime_ns = ?",
                         done)
