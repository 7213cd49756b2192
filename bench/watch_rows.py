"""Row ``watch_lag``: how long a file takes to reach the live index, against a bare inotify
reader watching the same directory in the same run.

In process (``bench_core``): a watched location, the Core's ``entries.created`` events
(published right after a batch commits, so an event means the index holds the file)
and, on a thread of its own, a bare inotify reader (asyncinotify, synchronous) that
only notes when each name's first event arrived.

* single files: created one at a time, each once the previous is indexed; the figure
  is the 99th percentile of create → ``entries.created``; the baseline is the bare
  reader's create → event for the same files.
* a burst: ``burst`` files created as fast as a thread can, then the time until the
  index holds all of them; the baseline is the time until the bare reader saw all.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask

from bench.common import median
from bench.inproc import bench_core
from bench.report import Row

WHAT = "live index lag: single files (p99) and a 10,000-file burst"
TIMEOUT_S = 120.0


class BareReader:
    """A bare inotify reader on a thread: first-event time of every name in one directory."""

    def __init__(self, directory: Path) -> None:
        self.seen: dict[str, float] = {}
        self._ino = Inotify(sync_timeout=0.05, cache_size=1024)
        self._ino.add_watch(directory, Mask.CREATE | Mask.CLOSE_WRITE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bare-inotify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = self.seen
        while not self._stop.is_set():
            ev = self._ino.sync_get()
            if ev is not None and ev.name is not None:
                seen.setdefault(str(ev.name), time.perf_counter())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._ino.close()


async def _until(cond: Callable[[], bool], every: float, what: str) -> None:
    """Poll ``cond``; a reader that missed an event fails the row instead of hanging it."""
    deadline = time.monotonic() + TIMEOUT_S
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}")
        await asyncio.sleep(every)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run(tmp: Path, *, singles: int, burst: int) -> Row:
    from rpc.dispatch import Dispatcher

    root = tmp / "watched"
    (root / "one").mkdir(parents=True)
    (root / "burst").mkdir()
    core = await bench_core(tmp / "watch-data")
    try:
        lib = await core.libraries.create_library("bench-watch")
        added = await Dispatcher(core).execute_json_operation(
            "action:locations.add.input.v1", lib.id, {"path": str(root)})
        await asyncio.wait_for((await lib.jobs.get_handle(added.job_id)).wait(), TIMEOUT_S)
        sub = core.events.subscribe(["entries.created"], lib.id)

        async def created(n: int) -> float:
            """Wait until ``n`` more entries were created; the time the last batch landed."""
            while n > 0:
                ev = await asyncio.wait_for(sub.get(), TIMEOUT_S)
                assert ev is not None
                n -= len(ev.entry_ids)  # type: ignore[attr-defined]
            return time.perf_counter()

        # Single files, one at a time.
        bare = BareReader(root / "one")
        lag, bare_lag = [], []
        try:
            for i in range(singles):
                name = f"single{i:05d}.txt"
                t0 = time.perf_counter()
                fd = os.open(root / "one" / name, os.O_WRONLY | os.O_CREAT, 0o644)
                os.close(fd)
                t1 = await created(1)
                lag.append(t1 - t0)
                await _until(lambda name=name: name in bare.seen, 0.001, f"the bare reader to see {name}")
                bare_lag.append(bare.seen[name] - t0)
        finally:
            bare.close()

        # A burst.
        bare = BareReader(root / "burst")
        try:
            def make() -> float:
                for i in range(burst):
                    fd = os.open(root / "burst" / f"b{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644)
                    os.close(fd)
                return time.perf_counter()
            t0 = time.perf_counter()
            made_task = asyncio.create_task(asyncio.to_thread(make))
            t_index = await created(burst)
            t_made = await made_task
            await _until(lambda: len(bare.seen) >= burst, 0.005,
                         f"the bare reader to see all {burst} files")
            t_bare = max(bare.seen.values())
        finally:
            bare.close()
        sub.close()
        watcher = core.watches.get(lib.id, added.location.id)
        batches = watcher.batches if watcher is not None else None
    finally:
        await core.shutdown()

    p99, base_p99 = _p99(lag) * 1000, _p99(bare_lag) * 1000
    burst_s, bare_burst_s, made_s = t_index - t0, t_bare - t0, t_made - t0
    after_bare_ms = (t_index - t_bare) * 1000
    met = p99 <= 1000 and after_bare_ms <= 1000
    extra: dict[str, Any] = {
        "singles": singles, "single_p50_ms": median(lag) * 1000, "single_p99_ms": p99,
        "bare_p50_ms": median(bare_lag) * 1000, "bare_p99_ms": base_p99,
        "burst_files": burst, "burst_index_s": burst_s, "burst_bare_s": bare_burst_s,
        "burst_create_s": made_s, "burst_index_after_bare_ms": after_bare_ms,
        "batches": batches}
    return Row("watch_lag", WHAT, "ms (p99)", p99, "bare inotify reader", base_p99,
               p99 / base_p99 if base_p99 else None,
               "p99 <= 1000 ms; burst indexed <= 1 s after the bare reader saw it", met,
               note=(f"{singles} single files: p50 {extra['single_p50_ms']:.1f} ms, p99 "
                     f"{p99:.1f} ms (bare reader p50 {extra['bare_p50_ms']:.2f} ms, p99 "
                     f"{base_p99:.2f} ms); {burst:,}-file burst: created in {made_s:.2f} s, "
                     f"bare reader saw all at {bare_burst_s:.2f} s, index held all at "
                     f"{burst_s:.2f} s ({after_bare_ms:.0f} ms after the reader)"),
               extra=extra)
