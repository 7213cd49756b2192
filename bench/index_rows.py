"""Row 7: entries indexed per second on a 100,000-file tree, against a bare ``os.scandir`` walk.

The tree generator and the baseline are here; the indexer is
``action:locations.add.input.v1`` (issue 6). Until that operation exists the row
reports the baseline alone and says the indexer is not built.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.common import median
from bench.inproc import bench_core
from bench.report import Row

OP = "action:locations.add.input.v1"
OPERATIONS_RESCAN = "action:locations.rescan.input.v1"
WHAT = "entries indexed on a 100,000-file tree"
FILES, PER_DIR, DIRS_PER_TOP = 100_000, 100, 10
INDEX_TIMEOUT_S = 180.0


def make_tree(root: Path, files: int = FILES) -> int:
    """``files`` files of 0-511 bytes, 100 to a directory, 10 leaf directories under each
    top one, with a few extensions. Returns the number of entries (files + directories).

    Files are sparse (``ftruncate``): indexing reads metadata, not content, and
    writing the bytes makes the tree several times slower to build.
    """
    exts = (".txt", ".jpg", ".md", ".rs", ".json", "")
    dirs = 0
    leaf: Path | None = None
    for i in range(files):
        if i % PER_DIR == 0:
            d = i // PER_DIR
            top = root / f"top{d // DIRS_PER_TOP:03d}"
            if d % DIRS_PER_TOP == 0:
                top.mkdir(parents=True)
                dirs += 1
            leaf = top / f"dir{d % DIRS_PER_TOP:02d}"
            leaf.mkdir()
            dirs += 1
        assert leaf is not None
        fd = os.open(leaf / f"file{i:06d}{exts[i % len(exts)]}", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, (i * 37) % 512)
        finally:
            os.close(fd)
    return files + dirs


def scandir_walk(root: Path, stat: bool = False) -> int:
    """Entries under ``root`` by a bare recursive ``os.scandir`` (optionally stat()ing each)."""
    count = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                if stat:
                    entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def indexer_available() -> bool:
    import rpc.operations  # noqa: F401 - registers every operation
    from rpc.registry import OPERATIONS
    return OPERATIONS.get(OP) is not None


async def _index(tmp: Path, root: Path) -> dict[str, Any]:
    """Add ``root`` as a location and time it until its index job completed, then time an
    incremental rescan of the unchanged tree. Returns seconds and the jobs' outputs."""
    import msgspec

    from rpc.dispatch import Dispatcher

    core = await bench_core(tmp / "index-data")
    try:
        lib = await core.libraries.create_library("bench-index")
        ex = Dispatcher(core).execute_json_operation
        t0 = time.perf_counter()
        added = msgspec.to_builtins(await ex(OP, lib.id, {"path": str(root)}))
        first = await asyncio.wait_for(
            (await lib.jobs.get_handle(added["job_id"])).wait(), INDEX_TIMEOUT_S)
        index_s = time.perf_counter() - t0
        out: dict[str, Any] = {"index_seconds": index_s, "index_output": first}
        if OPERATIONS_RESCAN in _ops():
            t0 = time.perf_counter()
            again = msgspec.to_builtins(await ex(OPERATIONS_RESCAN, lib.id,
                                                {"id": added["location"]["id"]}))
            out["rescan_output"] = await asyncio.wait_for(
                (await lib.jobs.get_handle(again["job_id"])).wait(), INDEX_TIMEOUT_S)
            out["rescan_seconds"] = time.perf_counter() - t0
        return out
    finally:
        await core.shutdown()


def _ops() -> set[str]:
    from rpc.registry import OPERATIONS
    return {op.name for op in OPERATIONS}


async def run(tmp: Path, *, rounds: int, files: int = FILES) -> Row:
    root = tmp / "tree"
    t0 = time.perf_counter()
    entries = await asyncio.to_thread(make_tree, root, files)
    made_s = time.perf_counter() - t0
    # A tree people index was not made a second ago: its metadata is on disk, not being
    # written back by the kernel (on the other core) while the walk and the indexer run.
    await asyncio.to_thread(os.sync)
    bare, with_stat = [], []

    def walks() -> float:
        """One bare walk and one with lstat; returns the latter's rate."""
        t = time.perf_counter()
        n = scandir_walk(root)
        bare.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        scandir_walk(root, stat=True)
        with_stat.append(n / (time.perf_counter() - t))
        assert n == entries, (n, entries)
        return with_stat[-1]

    if not indexer_available():
        walks()
        return Row("indexing", WHAT, "entries/s", None, "os.scandir walk", median(bare), None,
                   "report (target after first figure)", None,
                   note=f"not available yet (indexer not built: no {OP})", extra={})
    # Rounds of a walk then a first index (a library of its own each) and a rescan: the
    # index is one run of a few tenths of a second, so its figure is a median too.
    results: list[dict[str, Any]] = []
    ratios, rescan_ratios = [], []
    for i in range(rounds):
        walk_rate = walks()
        try:
            result = await _index(tmp / f"round{i}", root)
        except Exception as e:  # noqa: BLE001 - report the indexer's failure in the table
            return Row("indexing", WHAT, "entries/s", None, "os.scandir walk", median(bare),
                       None, "report (target after first figure)", None,
                       note=f"indexer failed: {type(e).__name__}: {e}", extra={})
        seen = (result["index_output"] or {}).get("seen", entries)
        result["entries_per_s"] = seen / result["index_seconds"]
        ratios.append(result["entries_per_s"] / walk_rate)
        if "rescan_seconds" in result:
            result["rescan_entries_per_s"] = seen / result["rescan_seconds"]
            rescan_ratios.append(result["rescan_entries_per_s"] / walk_rate)
        results.append(result)
    value = median([r["entries_per_s"] for r in results])
    walk = median(with_stat)
    ratio = median(ratios)
    extra: dict[str, Any] = {"entries": entries, "files": files,
                             "scandir_stat_entries_per_s": walk, "ratios": ratios,
                             "rescan_ratios": rescan_ratios, "runs": results,
                             "rounds": {"scandir": bare, "scandir_stat": with_stat}}
    rescan_ratio = median(rescan_ratios) if rescan_ratios else None
    rescan = ""
    if rescan_ratio is not None:
        extra["rescan_entries_per_s"] = median([r["rescan_entries_per_s"] for r in results])
        extra["rescan_ratio"] = rescan_ratio
        rescan = (f"; incremental rescan of the unchanged tree: "
                  f"{extra['rescan_entries_per_s']:,.0f} entries/s = {rescan_ratio:.2f}x of "
                  f"the walk (target >= 0.75x)")
    met = ratio >= 0.5 and rescan_ratio is not None and rescan_ratio >= 0.75
    seconds = ", ".join(f"{r['index_seconds']:.2f}" for r in results)
    return Row("indexing", WHAT, "entries/s", value, "os.scandir + lstat walk", walk, ratio,
               ">= 50% of the walk, rescan >= 75%", met,
               note=(f"{OP} until its job completed, {entries:,} entries ({files:,} files, "
                     f"made in {made_s:.1f} s), medians of {rounds} rounds of a walk, a first "
                     f"index into a new library and a rescan (index {seconds} s; ratio: median "
                     f"of the rounds' ratios){rescan}; bare scandir walk (no lstat): "
                     f"{median(bare):,.0f} entries/s"),
               extra=extra)
