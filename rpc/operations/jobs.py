"""Job operations; all library-scoped."""

from __future__ import annotations

from typing import Any

import msgspec

from daemon import errors
from daemon.jobs.manager import JobInfo
from rpc.registry import CLIENTS_ONLY, OPERATIONS, Empty, OpContext


class JobId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class JobInfoInput(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    transitions: bool = False


class ListJobs(msgspec.Struct, forbid_unknown_fields=True):
    status: str | None = None
    limit: int = 100
    extension_id: str | None = None  # only this extension's jobs


class Dispatch(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    input: dict[str, Any] = {}


class JobTypeInfo(msgspec.Struct):
    name: str
    resumable: bool
    description: str


@OPERATIONS.register("query:jobs.list.v1", ListJobs, library=True)
async def list_jobs(ctx: OpContext, inp: ListJobs) -> list[JobInfo]:
    """Jobs of the library, newest first (an extension sees only its own)."""
    jobs = await ctx.need_library().jobs.list(inp.status, max(1, min(inp.limit, 10_000)),
                                              extension_id=inp.extension_id)
    return [j for j in jobs if ctx.caller.sees_job(j.extension_id)]


@OPERATIONS.register("query:jobs.info.v1", JobInfoInput, library=True)
async def info(ctx: OpContext, inp: JobInfoInput) -> JobInfo:
    """One job, with live progress while it runs (an extension sees only its own)."""
    info = await ctx.need_library().jobs.info(inp.id, transitions=inp.transitions)
    if not ctx.caller.sees_job(info.extension_id):
        raise errors.NotFound(f"no job {inp.id} in library {info.library_id}")
    return info


@OPERATIONS.register("query:jobs.types.v1", Empty, library=True)
def types(ctx: OpContext, _: Empty) -> list[JobTypeInfo]:
    """The job types that can be dispatched."""
    return [JobTypeInfo(t.name, t.resumable, t.description) for t in ctx.core.job_types]


@OPERATIONS.register("action:jobs.dispatch.input.v1", Dispatch, library=True, callers=CLIENTS_ONLY)
async def dispatch(ctx: OpContext, inp: Dispatch) -> dict[str, str]:
    """Queue a job by type name."""
    return {"job_id": await ctx.need_library().jobs.dispatch_by_name(inp.name, inp.input)}


@OPERATIONS.register("action:jobs.pause.input.v1", JobId, library=True, callers=CLIENTS_ONLY)
async def pause(ctx: OpContext, inp: JobId) -> dict[str, str]:
    """Pause a job (running jobs pause at their next interruption check)."""
    return {"status": await ctx.need_library().jobs.pause(inp.id)}


@OPERATIONS.register("action:jobs.resume.input.v1", JobId, library=True, callers=CLIENTS_ONLY)
async def resume(ctx: OpContext, inp: JobId) -> dict[str, str]:
    """Resume a paused job from its last checkpoint."""
    return {"status": await ctx.need_library().jobs.resume(inp.id)}


@OPERATIONS.register("action:jobs.cancel.input.v1", JobId, library=True, callers=CLIENTS_ONLY)
async def cancel(ctx: OpContext, inp: JobId) -> dict[str, str]:
    """Cancel a job."""
    return {"status": await ctx.need_library().jobs.cancel(inp.id)}
