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
import time
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
BATCH = 256


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
    progress runs from ``progress_from`` to 1.
    """
    db = ctx.db
    root = db.run_sync(lambda c: store.location_root(c, location_id))
    if "total" not in state:
        state = {"after": 0, "hashed": 0, "skipped": 0, "bytes": 0,
                 "total": db.run_sync(lambda c: store.count_unhashed(c, location_id))}
    total = max(int(state["total"]), 1)
    t0 = time.monotonic()
    while True:
        after = int(state["after"])
        rows = db.run_sync(partial(store.unhashed_files, location_id=location_id, after=after,
                                   limit=BATCH))
        if not rows:
            break
        done: list[tuple[str, int, int, int]] = []
        for entry_id, path, size, mtime_ns in rows:
            try:
                fd = fs.open_file(root, path)
            except errors.SdError:
                state["skipped"] += 1
                continue
            try:
                st = os.fstat(fd)
                if st.st_size != size or st.st_mtime_ns != mtime_ns:
                    state["skipped"] += 1  # changed since indexing; the next rescan catches up
                    continue
                cas, n = cas_id_of_fd(fd, size)
            except (OSError, errors.SdError) as e:
                ctx.add_warning(f"cannot hash {path}: {getattr(e, 'message', e)}")
                state["skipped"] += 1
                continue
            finally:
                os.close(fd)
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
    ctx.report_progress(1.0, f"hashed {state['hashed']} files ({state['skipped']} skipped)")
    return {"hashed": state["hashed"], "skipped": state["skipped"], "bytes": state["bytes"],
            "seconds": round(time.monotonic() - t0, 3)}


def _store_cas(conn: Any, location_id: int, done: list[tuple[str, int, int, int]]) -> None:
    store.require_location(conn, location_id)
    with transaction(conn):
        # Only if the entry still describes the file that was hashed.
        conn.executemany("UPDATE entries SET cas_id = ? WHERE id = ? AND size = ? AND mtime_ns = ?",
                         done)
