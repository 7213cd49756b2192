"""Row ``identify``: content hashing (``locations.identify``) of many small files, against a
plain Python loop that opens, reads and BLAKE3-hashes the same files, in the same run.

The tree: ``files`` files of 0-4 KiB of random bytes, 100 to a directory (written, not
sparse). Each round runs the plain loop over every file, then clears the location's
cas_ids and times a ``locations.identify`` job from dispatch to its completed row.
Both read from the page cache (the tree was just written and read).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import blake3
import msgspec

from bench.common import median
from bench.inproc import bench_core
from bench.report import Row

WHAT = "content hashing (identify) of 20,000 small files"
TARGET = ">= 50% of a plain open+read+BLAKE3 loop"
PER_DIR = 100


def make_files(root: Path, files: int) -> list[str]:
    rnd = random.Random(15)
    paths = []
    for i in range(files):
        d = root / f"d{i // PER_DIR:04d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        p = d / f"f{i:06d}.bin"
        p.write_bytes(rnd.randbytes(rnd.randrange(0, 4096)))
        paths.append(str(p))
    return paths


def plain_loop(paths: list[str], cpu: list[float] | None = None) -> float:
    """Files per second of the simplest hashing loop a person would write (its CPU
    seconds per file appended to ``cpu``)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            blake3.blake3(f.read()).hexdigest()
    dt = time.perf_counter() - t0
    if cpu is not None:
        cpu.append((time.process_time() - c0) / len(paths))
    return len(paths) / dt


async def run(tmp: Path, *, rounds: int, files: int) -> Row:
    from rpc.dispatch import Dispatcher

    root = tmp / "hash-tree"
    paths = await asyncio.to_thread(make_files, root, files)
    core = await bench_core(tmp / "hash-data")
    plain, ours, cpu = [], [], []
    plain_cpu: list[float] = []  # CPU seconds per file
    ours_cpu: list[float] = []
    try:
        lib = await core.libraries.create_library("bench-hash")
        ex = Dispatcher(core).execute_json_operation
        added = msgspec.to_builtins(await ex("action:locations.add.input.v1", lib.id,
                                             {"path": str(root)}))
        await (await lib.jobs.get_handle(added["job_id"])).wait()
        loc = added["location"]["id"]
        plain_loop(paths)  # warm the page cache
        for _ in range(rounds):
            plain.append(plain_loop(paths, plain_cpu))
            await lib.db.run(lambda c: c.execute(
                "UPDATE entries SET cas_id = NULL WHERE location_id = ?", (loc,)))
            c0 = os.times()
            t0 = time.perf_counter()
            job_id = await lib.jobs.dispatch_by_name("locations.identify", {"location_id": loc})
            out: dict[str, Any] = await (await lib.jobs.get_handle(job_id)).wait()
            dt = time.perf_counter() - t0
            c1 = os.times()
            if out["hashed"] != files:
                raise RuntimeError(f"identify hashed {out['hashed']} of {files} files: {out}")
            ours.append(files / dt)
            cpu.append((c1.user + c1.system - c0.user - c0.system) / dt)
            ours_cpu.append((c1.user + c1.system - c0.user - c0.system) / files)
    finally:
        await core.shutdown()
    ratio = median([o / p for o, p in zip(ours, plain, strict=False)])
    return Row("identify", WHAT, "files/s", median(ours), "plain open+read+BLAKE3 loop",
               median(plain), ratio, TARGET, ratio >= 0.5,
               note=(f"{files:,} files of 0-4 KiB, {PER_DIR} to a directory; the job from "
                     f"dispatch to its completed row (cas_ids cleared before each round), "
                     f"medians of {rounds} interleaved rounds; the job used "
                     f"{median(cpu):.2f} CPUs while it ran; CPU per file (all threads): the "
                     f"job {median(ours_cpu) * 1e6:.1f} us, the plain loop "
                     f"{median(plain_cpu) * 1e6:.1f} us"),
               extra={"files": files, "rounds": {"identify": ours, "plain": plain},
                      "cpus_used": cpu, "cpu_s_per_file": {"identify": ours_cpu,
                                                           "plain": plain_cpu}})
