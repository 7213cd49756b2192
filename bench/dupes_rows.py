"""Rows ``duplicates`` and ``guest_read`` (issue 14).

``duplicates``: a generated tree like the issue's (unique small files, groups of identical
small files, identical large pairs, and large pairs of one size that differ in one byte in
the middle, plus hard links and empty files) is indexed, then the duplicate-finder job
runs with no content hash in the index, against ``jdupes -r`` on the same warm tree, in
alternating rounds. The row fails when the finder's tagged set differs from jdupes'.

``guest_read``: test-extension's ``read_file`` job reads a 100 MB file through ABI v2's
``entry_read`` into a 1 MiB guest buffer, against Python reading it with ``os.pread`` in
1 MiB blocks, same run, alternating rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.common import BUILT_EXTENSIONS, ROOT, median
from bench.inproc import BENCH_RATE_PER_MINUTE, bench_app
from bench.report import Row

FINDER = BUILT_EXTENSIONS / "duplicate-finder"
TEST_EXT = BUILT_EXTENSIONS / "test-extension"
MiB = 1024 * 1024
JOB_TIMEOUT_S = 300.0


def ensure_jdupes() -> str:
    """The jdupes binary; installs Debian's package (scripts/ensure-test-tools.sh) if missing."""
    found = shutil.which("jdupes")
    if found is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-test-tools.sh")], check=True)
        found = shutil.which("jdupes")
    if found is None:
        raise RuntimeError("jdupes is missing and could not be installed")
    return found


def make_tree(root: Path, *, unique: int, groups: int, big_pairs: int, seed: int = 14
              ) -> tuple[int, int]:
    """The bench tree; returns (files, bytes). Large files are 2-20 MB, ``big_pairs`` identical
    pairs and as many same-size pairs differing in one middle byte."""
    rnd = random.Random(seed)
    n = size = 0

    def put(rel: str, data: bytes) -> None:
        nonlocal n, size
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        n += 1
        size += len(data)

    pool = rnd.randbytes(64 * 1024)
    for i in range(unique):
        k = rnd.randrange(1, 16 * 1024)
        start = rnd.randrange(0, len(pool) - k)
        # Distinct content: a unique 8-byte prefix over a slice of the pool.
        put(f"unique/d{i // 500:03d}/u{i:05d}.dat", i.to_bytes(8, "little") + pool[start:start + k])
    for g in range(groups):
        data = rnd.randbytes(rnd.randrange(1, 32 * 1024))
        for c in range(2 + g % 2):
            put(f"groups/g{g:04d}/copy{c}.dat", data)
    for p in range(big_pairs):
        data = rnd.randbytes(rnd.randrange(2_000_000, 20_000_000))
        put(f"big/same{p:02d}/a.bin", data)
        put(f"big/same{p:02d}/b.bin", data)
        trap = bytearray(rnd.randbytes(rnd.randrange(2_000_000, 20_000_000)))
        put(f"big/trap{p:02d}/a.bin", bytes(trap))
        trap[len(trap) // 2] ^= 0xFF
        put(f"big/trap{p:02d}/b.bin", bytes(trap))
    put("links/solo", rnd.randbytes(5000))
    os.link(root / "links" / "solo", root / "links" / "solo-link")  # one file, two names
    put("empty/a", b"")
    put("empty/b", b"")
    return n, size


def run_jdupes(binary: str, root: Path) -> tuple[float, set[str]]:
    t0 = time.perf_counter()
    out = subprocess.run([binary, "-r", "-q", str(root)], capture_output=True, check=True,
                         timeout=JOB_TIMEOUT_S).stdout.decode()
    dt = time.perf_counter() - t0
    return dt, {os.path.relpath(line, root) for line in out.splitlines() if line.strip()}


async def _wait_job(lib: Any, job_id: str) -> Any:
    return await asyncio.wait_for((await lib.jobs.get_handle(job_id)).wait(), JOB_TIMEOUT_S)


async def run_duplicates(tmp: Path, *, rounds: int, unique: int, groups: int,
                         big_pairs: int) -> Row:
    what = "duplicate-finder job on a tree with one-byte traps"
    target = "<= 2x jdupes' time, same tagged set"
    binary = ensure_jdupes()
    root = tmp / "dupes-tree"
    t0 = time.perf_counter()
    files, total = await asyncio.to_thread(make_tree, root, unique=unique, groups=groups,
                                           big_pairs=big_pairs)
    made_s = time.perf_counter() - t0
    app = await bench_app(tmp / "dupes-data")
    try:
        await app.plugins.install(FINDER)
        lib = await app.core.libraries.create_library("bench-dupes")
        ex = app.dispatcher.execute_json_operation
        added = msgspec.to_builtins(await ex("action:locations.add.input.v1", lib.id,
                                             {"path": str(root)}))
        await _wait_job(lib, added["job_id"])
        location_id = added["location"]["id"]
        await asyncio.to_thread(run_jdupes, binary, root)  # warm the cache and jdupes

        async def finder() -> tuple[float, dict[str, Any], set[str]]:
            await lib.db.run(lambda c: c.execute("DELETE FROM content_hashes"))
            t = time.perf_counter()
            started = await ex("action:extensions.run_job.input.v1", lib.id, {
                "extension_id": "duplicate-finder", "job": "find",
                "state": {"location_id": location_id}})
            output = await _wait_job(lib, started["job_id"])
            dt = time.perf_counter() - t
            return dt, output, await _tagged(ex, lib.id)

        ours, theirs = [], []
        tagged: set[str] = set()
        reference: set[str] = set()
        output: dict[str, Any] = {}
        for _ in range(rounds):
            dt, reference = await asyncio.to_thread(run_jdupes, binary, root)
            theirs.append(dt)
            dt, output, tagged = await finder()
            ours.append(dt)
    finally:
        await app.shutdown()
    value, base = median(ours), median(theirs)
    ratio = median([o / t for o, t in zip(ours, theirs, strict=True)])
    same = tagged == reference
    stats = (output or {}).get("stats", {})
    note = (f"{files:,} files, {total / 1e6:,.0f} MB ({unique:,} unique small, {groups:,} groups "
            f"of 2-3, {big_pairs} identical 2-20 MB pairs and {big_pairs} one-byte-different "
            f"ones, a hard-linked pair, empty files), made in {made_s:.1f} s; location indexed "
            f"first, content hashes dropped before each finder run; medians of {rounds} "
            f"alternating rounds (ratio: median of the rounds' ratios) (finder {', '.join(f'{x:.2f}' for x in ours)} s, jdupes "
            f"{', '.join(f'{x:.2f}' for x in theirs)} s); finder read "
            f"{stats.get('bytes_read', 0) / 1e6:,.0f} MB, tagged {len(tagged):,} files in "
            f"{stats.get('groups', 0):,} groups; jdupes listed {len(reference):,}: "
            + ("same set" if same else
               f"SETS DIFFER: only finder {sorted(tagged - reference)[:5]}, only jdupes "
               f"{sorted(reference - tagged)[:5]}"))
    return Row("duplicates", what, "s", value, "jdupes -r (warm)", base, ratio, target,
               same and ratio <= 2.0, note=note,
               extra={"files": files, "bytes": total, "finder_s": ours, "jdupes_s": theirs,
                      "tagged": len(tagged), "jdupes_listed": len(reference),
                      "same_set": same, "stats": stats})


async def _tagged(ex: Any, library_id: str) -> set[str]:
    paths: set[str] = set()
    cursor = None
    while True:
        page = msgspec.to_builtins(await ex("query:entries.list.v1", library_id, {
            "tag": "duplicate", "limit": 1000, "cursor": cursor}))
        paths |= {e["path"] for e in page["entries"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return paths


def pread_blocks(path: Path, block: int = MiB, passes: int = 1) -> tuple[float, int]:
    """Seconds to read ``path`` ``passes`` times with ``os.pread`` in ``block``-byte blocks."""
    fd = os.open(path, os.O_RDONLY)
    try:
        t = time.perf_counter()
        total = 0
        for _ in range(passes):
            offset = 0
            while True:
                data = os.pread(fd, block, offset)
                if not data:
                    break
                offset += len(data)
            total += offset
        return time.perf_counter() - t, total
    finally:
        os.close(fd)


async def run_guest_read(tmp: Path, *, rounds: int, size_mb: int = 100, passes: int = 5) -> Row:
    what = f"guest reads a {size_mb} MB file with entry_read"
    root = tmp / "read-tree"
    root.mkdir()
    path = root / "big.bin"
    block = random.Random(5).randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(size_mb):
            f.write(i.to_bytes(8, "little") + block[8:])
    size = path.stat().st_size
    src = tmp / "read-ext" / "bench-reader"
    shutil.copytree(TEST_EXT, src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["id"] = "bench-reader"
    manifest["permissions"]["methods"] = ["query:entries.read.v1"]
    manifest["permissions"]["rate_limits"]["requests_per_minute"] = BENCH_RATE_PER_MINUTE
    (src / "manifest.json").write_text(json.dumps(manifest))
    app = await bench_app(tmp / "read-data")
    try:
        await app.plugins.install(src)
        lib = await app.core.libraries.create_library("bench-read")
        ex = app.dispatcher.execute_json_operation
        added = msgspec.to_builtins(await ex("action:locations.add.input.v1", lib.id,
                                             {"path": str(root)}))
        await _wait_job(lib, added["job_id"])
        page = msgspec.to_builtins(await ex("query:entries.list.v1", lib.id,
                                            {"kind": "file"}))
        entry_id = page["entries"][0]["id"]

        async def guest() -> float:
            t = time.perf_counter()
            started = await ex("action:extensions.run_job.input.v1", lib.id, {
                "extension_id": "bench-reader", "job": "read_file",
                "state": {"entry_id": entry_id, "buffer": MiB, "passes": passes}})
            out = await _wait_job(lib, started["job_id"])
            dt = time.perf_counter() - t
            if out.get("error") is not None or out.get("bytes") != size * passes:
                raise RuntimeError(f"guest read went wrong: {out}")
            return dt

        await asyncio.to_thread(pread_blocks, path)  # warm the page cache
        await guest()
        ours, theirs = [], []
        for _ in range(rounds):
            dt, n = await asyncio.to_thread(pread_blocks, path, MiB, passes)
            assert n == size * passes
            theirs.append(n / dt / 1e6)
            ours.append(n / await guest() / 1e6)
    finally:
        await app.shutdown()
    value, base = median(ours), median(theirs)
    ratio = median([o / t for o, t in zip(ours, theirs, strict=True)])
    return Row("guest_read", what, "MB/s", value, "Python os.pread, 1 MiB blocks", base, ratio,
               ">= 50%", ratio >= 0.5,
               note=(f"test-extension's read_file job through Library::read_into, 1 MiB guest "
                     f"buffer, reading the file {passes} times a job (both sides); timed from "
                     f"dispatch to the job's completion (includes the job system and a fresh "
                     f"instance); page cache warm; medians of {rounds} "
                     f"alternating rounds (ratio: median of the rounds' ratios)"),
               extra={"bytes": size, "guest_mb_s": ours, "pread_mb_s": theirs})
