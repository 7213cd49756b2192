"""Native job types the bench registers (``open_app(job_types=...)``)."""

from __future__ import annotations

import time

import msgspec

from daemon.jobs import JobContext, JobType


class Empty(msgspec.Struct):
    pass


def noop(ctx: JobContext, inp: Empty) -> None:
    """The trivial native job: returns at once (a plain function, so it gets a thread,
    like ``wasm_job``)."""


class Reports(msgspec.Struct, forbid_unknown_fields=True):
    count: int = 100_000
    # Spread the reports over about this long (0: as fast as possible).
    seconds: float = 0.0


def reporter(ctx: JobContext, inp: Reports) -> dict[str, int]:
    """Calls ``report_progress`` ``count`` times, the last one with 1.0."""
    chunks = 100
    per_chunk = max(1, inp.count // chunks)
    pause = inp.seconds / chunks
    for i in range(1, inp.count + 1):
        ctx.report_progress(i / inp.count, f"{i}/{inp.count}")
        if pause and i % per_chunk == 0:
            time.sleep(pause)
    return {"reports": inp.count}


NOOP = "bench.noop"
REPORTER = "bench.progress"
JOB_TYPES = [
    JobType(NOOP, False, Empty, noop, "does nothing (bench)"),
    JobType(REPORTER, False, Reports, reporter, "reports progress N times (bench)"),
]
