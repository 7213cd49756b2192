"""Row 5: trivial WASM jobs dispatched, run and persisted per second, against native ones.

In one in-process Core: N jobs of the native ``bench.noop`` type, then N
``wasm_job`` jobs of a WAT extension whose job export returns 0 at once.
Each batch is dispatched concurrently (each dispatch commits its queued row)
and timed until N ``job.completed`` events arrived (each is published after
the completed row is committed), then the rows are checked.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench import wat
from bench.common import median
from bench.inproc import BENCH_RATE_PER_MINUTE, bench_core
from bench.jobtypes import JOB_TYPES, NOOP
from bench.report import Row
from daemon.core import Core
from daemon.libraries.manager import Library

EXT_ID = "bench-noop-job"
TARGET = ">= 500/s and >= 50% of native"


async def _batch(core: Core, lib: Library, name: str, inp: dict[str, Any], n: int) -> float:
    """Jobs per second for n jobs of ``name``, dispatch to the last completed row."""
    sub = core.events.subscribe(["job.completed", "job.failed", "job.cancelled"], lib.id)
    try:
        t0 = time.perf_counter()
        ids = set(await asyncio.gather(*(lib.jobs.dispatch_by_name(name, inp) for _ in range(n))))
        done = 0
        while done < n:
            ev = await asyncio.wait_for(sub.get(), 60)
            if ev is None:
                raise RuntimeError("event subscription closed")
            kind = ev.__struct_config__.tag
            if getattr(ev, "job_id", None) in ids:
                if kind != "job.completed":
                    raise RuntimeError(f"a {name} job ended with {kind}: {ev}")
                done += 1
        dt = time.perf_counter() - t0
    finally:
        sub.close()
    rows = await lib.jobs.list("completed", limit=100_000)
    missing = ids - {r.id for r in rows}
    if missing:
        raise RuntimeError(f"{len(missing)} {name} jobs are not persisted as completed")
    return n / dt


async def run(tmp: Path, *, rounds: int, jobs: int) -> Row:
    core = await bench_core(tmp / "jobs-data", job_types=JOB_TYPES)
    try:
        pm = core.plugin_manager
        assert pm is not None
        await pm.install(wat.make_extension(tmp / "jobs-src", EXT_ID,
                                            wat.compile_wat(wat.trivial_job()),
                                            rate_per_minute=BENCH_RATE_PER_MINUTE))
        wasm_input = {"extension_id": EXT_ID, "export_fn": pm.job_export(EXT_ID, "noop"),
                      "state_json": "{}"}
        lib = await core.libraries.create_library("bench-jobs")
        await _batch(core, lib, NOOP, {}, 20)  # warm-up
        await _batch(core, lib, "wasm_job", wasm_input, 20)
        native, wasm = [], []
        for _ in range(rounds):
            native.append(await _batch(core, lib, NOOP, {}, jobs))
            wasm.append(await _batch(core, lib, "wasm_job", wasm_input, jobs))
    finally:
        await core.shutdown()
    value, base = median(wasm), median(native)
    ratio = median([w / n for w, n in zip(wasm, native, strict=False)])
    return Row("wasm_jobs", "trivial WASM jobs run and persisted", "jobs/s", value,
               "native jobs", base, ratio, TARGET, value >= 500 and ratio >= 0.5,
               note=f"batches of {jobs} jobs dispatched concurrently, medians of {rounds} rounds; "
                    f"{core.config.max_running_jobs} job slots",
               extra={"jobs_per_batch": jobs, "slots": core.config.max_running_jobs,
                      "rounds": {"wasm": wasm, "native": native}})
