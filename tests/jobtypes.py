"""Job types the tests register through the public registry (``open_app(job_types=...)``)."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec

from daemon.jobs import Interrupt, Interrupted, JobContext, JobType


class Steps(msgspec.Struct, forbid_unknown_fields=True):
    count: int
    delay: float = 0.0
    record: str | None = None  # a file that gets "pid step" per step done
    fail_at: int | None = None


def steps(ctx: JobContext, inp: Steps) -> dict[str, int]:
    """Counts to ``count``, one checkpoint per step; resumes from the checkpoint."""
    start = ctx.state["next"] if ctx.state else 0
    for i in range(start, inp.count):
        if inp.delay:
            time.sleep(inp.delay)
        if inp.fail_at == i:
            raise ValueError(f"boom at step {i}")
        if inp.record:
            with open(inp.record, "a") as f:
                f.write(f"{os.getpid()} {i}\n")
        ctx.increment_items(1)
        ctx.increment_bytes(10)
        ctx.report_progress((i + 1) / inp.count, f"step {i + 1}/{inp.count}")
        ctx.checkpoint({"next": i + 1})
        if ctx.check_interrupt() is not Interrupt.CONTINUE:
            raise Interrupted()
    return {"done": inp.count, "started_at": start}


async def async_steps(ctx: JobContext, inp: Steps) -> dict[str, int]:
    start = ctx.state["next"] if ctx.state else 0
    for i in range(start, inp.count):
        await asyncio.sleep(inp.delay)
        ctx.increment_items(1)
        ctx.report_progress((i + 1) / inp.count, f"async step {i + 1}")
        ctx.add_warning(f"warning {i}") if i == 0 else None
        await ctx.checkpoint_async({"next": i + 1})
        ctx.raise_if_interrupted()
    return {"done": inp.count}


class Empty(msgspec.Struct):
    pass


def noop(ctx: JobContext, inp: Empty) -> None:
    return None


async def noop_async(ctx: JobContext, inp: Empty) -> None:
    return None


class Sleep(msgspec.Struct):
    seconds: float


def sleeper(ctx: JobContext, inp: Sleep) -> str:
    time.sleep(inp.seconds)
    return "slept"


TEST_JOB_TYPES = [
    JobType("test.steps", True, Steps, steps, "counts, checkpointing every step"),
    JobType("test.async_steps", True, Steps, async_steps),
    JobType("test.noop", False, Empty, noop),
    JobType("test.noop_async", False, Empty, noop_async),
    JobType("test.sleep", False, Sleep, sleeper, "not resumable"),
]


class Warn(msgspec.Struct):
    count: int


def warner(ctx: JobContext, inp: Warn) -> int:
    for i in range(inp.count):
        ctx.add_warning(f"w{i}")
    return inp.count


TEST_JOB_TYPES.append(JobType("test.warn", False, Warn, warner))


class Big(msgspec.Struct):
    size: int


def big_output(ctx: JobContext, inp: Big) -> str:
    return "x" * inp.size


TEST_JOB_TYPES.append(JobType("test.big_output", False, Big, big_output))
