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
import struct
import time
from concurrent.futures import Future
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
_LE64 = struct.Struct("<Q").pack


def sample_ranges(size: int) -> list[tuple[int, int]]:
    """The (offset, length) ranges hashed after ``le64(size)``, in order."""
    if size <= SMALL_FILE:
        return [(0, size)] if size else []
    step = (size - HEADER - FOOTER - SAMPLE) // (SAMPLES - 1)
    return ([(0, HEADER)] + [(HEADER + i * step, SAMPLE) for i in range(SAMPLES)]
            + [(size - FOOTER, FOOTER)])


def cas_id_of_fd(fd: int, size: int) -> tuple[str, int]:
    """(cas_id, bytes read) of an open file of ``size`` bytes; NotFound-ish errors if it shrank."""
    if size <= SMALL_FILE:
        # Most files: one read, one hash call (a cas_id is the digest's first 8 bytes).
        data = os.pread(fd, size, 0) if size else b""
        if len(data) == size:
            return blake3.blake3(_LE64(size) + data).digest(CAS_HEX_DIGITS // 2).hex(), size
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
    progress runs from ``progress_from`` to 1. This thread hashes, opening files through
    their directory's fd, while the database thread (on the other core: SQLite works
    without the GIL) fetches the next batch of rows and stores the previous batch's
    cas_ids, each in one statement. A batch's checkpoint is written once its cas_ids are
    stored. (Two hashing threads were slower: a small file is a few short system calls,
    and the threads spent more handing the GIL to each other than they gained.)
    """
    db = ctx.db
    root = db.run_sync(lambda c: store.location_root(c, location_id))
    if "total" not in state:
        state = {"after": 0, "hashed": 0, "skipped": 0, "bytes": 0,
                 "total": db.run_sync(lambda c: store.count_unhashed(c, location_id))}
    total = max(int(state["total"]), 1)
    t0 = time.monotonic()
    dirs = fs.Dirs(root, keep=1)  # rows in id order come a directory at a time

    def fetch(after: int) -> Future[list[tuple[int, str, int, int]]]:
        return db.submit(partial(store.unhashed_files, location_id=location_id, after=after,
                                 limit=BATCH))

    def finish(batch: _Batch) -> None:
        """The batch's cas_ids are stored: count it, checkpoint, and stop if asked to."""
        state["hashed"] += len(batch.done)
        state["skipped"] += batch.skipped
        state["bytes"] += batch.bytes
        state["after"] = batch.last_id
        ctx.increment_items(len(batch.done))
        ctx.increment_bytes(batch.bytes)
        finished = state["hashed"] + state["skipped"]
        ctx.report_progress(progress_from + (1 - progress_from) * min(finished / total, 0.999),
                            f"hashed {state['hashed']} of {state['total']} files")
        ctx.checkpoint({**(extra or {}), "identify": state})
        if ctx.check_interrupt() is not Interrupt.CONTINUE:
            raise Interrupted()

    storing: tuple[Future[None], _Batch] | None = None  # the previous batch, being stored
    rows_fut = fetch(int(state["after"]))
    try:
        while True:
            rows = rows_fut.result()
            batch = None
            if rows:
                rows_fut = fetch(rows[-1][0])
                batch = _hash_batch(rows, dirs, ctx)
            if storing is not None:
                stored, prev = storing
                storing = None
                stored.result()
                finish(prev)
            if batch is None:
                break
            storing = (db.submit(partial(_store_cas, location_id=location_id,
                                         done=batch.done)), batch)
    finally:
        if storing is not None and not storing[0].cancel():
            _wait_quietly(storing[0])  # leave nothing of ours running on the database thread
        rows_fut.cancel()
        dirs.close()
    ctx.report_progress(1.0, f"hashed {state['hashed']} files ({state['skipped']} skipped)")
    return {"hashed": state["hashed"], "skipped": state["skipped"], "bytes": state["bytes"],
            "seconds": round(time.monotonic() - t0, 3)}


def _wait_quietly(fut: Future[None]) -> None:
    try:
        fut.result()
    except Exception:  # noqa: BLE001 - the error that got us here is the one to report
        pass


class _Batch:
    """One batch's hashes: what to store, and what to count once they are stored."""

    __slots__ = ("bytes", "done", "last_id", "skipped")

    def __init__(self, last_id: int) -> None:
        self.done: list[tuple[str, int, int, int]] = []  # (cas_id, entry id, size, mtime_ns)
        self.skipped = 0
        self.bytes = 0
        self.last_id = last_id


def _hash_batch(rows: list[tuple[int, str, int, int]], dirs: fs.Dirs,
                ctx: JobContext) -> _Batch:
    batch = _Batch(rows[-1][0])
    done = batch.done
    for entry_id, path, size, mtime_ns in rows:
        cas, nread, warning = _hash_one(dirs, path, size, mtime_ns)
        if cas is None:
            batch.skipped += 1
            if warning:
                ctx.add_warning(warning)
        else:
            done.append((cas, entry_id, size, mtime_ns))
            batch.bytes += nread
    return batch


def _hash_one(dirs: fs.Dirs, path: str, size: int, mtime_ns: int
              ) -> tuple[str | None, int, str | None]:
    """(cas_id, bytes read, None) if the file is still the regular file that was indexed;
    else (None, 0, a warning, or None when the next rescan catches up anyway)."""
    try:
        fd, st = dirs.open_file(path)  # refuses what is no longer a regular file
    except errors.SdError:
        return None, 0, None
    except OSError as e:  # its fstat
        return None, 0, f"cannot hash {path}: {e}"
    try:
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return None, 0, None
        cas, n = cas_id_of_fd(fd, size)
    except (OSError, errors.SdError) as e:
        return None, 0, f"cannot hash {path}: {getattr(e, 'message', e)}"
    finally:
        os.close(fd)
    return cas, n, None


def _store_cas(conn: Any, location_id: int, done: list[tuple[str, int, int, int]]) -> None:
    store.require_location(conn, location_id)
    if not done:
        return
    with transaction(conn):
        # One statement for the batch; only where the entry still describes the file
        # that was hashed.
        conn.execute(_STORE_CAS_SQL, (msgspec.json.encode(done),))


_STORE_CAS_SQL = (
    "UPDATE entries SET cas_id = v.cas FROM (SELECT value->>0 AS cas, value->>1 AS id, "
    "value->>2 AS size, value->>3 AS mtime_ns FROM json_each(?)) AS v "
    "WHERE entries.id = v.id AND entries.size = v.size AND entries.mtime_ns = v.mtime_ns")
