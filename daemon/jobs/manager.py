"""The job manager of one library: dispatch, scheduling, pause/resume/cancel, recovery.

Invariants:
- a job row (status ``queued``) is committed before ``dispatch_by_name`` returns;
- at most ``slots`` jobs run at once across every library sharing the semaphore,
  and queued jobs start in FIFO order;
- a resumable job restarts from its last checkpoint; the live counters between
  two checkpoints may be lost on a kill, the checkpoint never is.

A full disk (``DiskFull``) never strands a job: one that cannot write its checkpoint
pauses (reason ``disk full``; a job that is not resumable fails) and gives up its
slot; a queued job that cannot be marked running stays queued; a state change that
cannot be written is held in memory (clients see it) and written as soon as there
is room. A retry loop probes for room; when it comes back, held changes are written,
waiting jobs start and jobs paused for space resume, without a restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from daemon import errors
from daemon.events import (
    EventBus,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobQueued,
    JobResumed,
    JobStarted,
)
from daemon.jobs import store
from daemon.jobs.context import DISK_FULL, ContextRegistry, Interrupt, Interrupted, JobContext
from daemon.jobs.types import JobRegistry, JobType
from daemon.libraries.db import Database

log = logging.getLogger("sd.jobs")
MAX_EVENT_OUTPUT_BYTES = 64 * 1024
# Pause reasons that end by themselves when the job's extension is loaded again.
EXTENSION_PAUSES = ("unload", "extension not loaded", "upgrade", "job not registered")
# How often, at most, the disk is probed for room again after a write failed for lack of it.
SPACE_RETRY_MAX_S = 1.0
T = TypeVar("T")
_enc = msgspec.json.Encoder()


class Transition(msgspec.Struct):
    status: str
    at: float
    note: str | None = None


class JobInfo(msgspec.Struct):
    """A job as clients see it (``query:jobs.info.v1``). Live values while it runs."""

    id: str
    library_id: str
    name: str  # what it is called, e.g. "duplicate-finder:find"
    status: str
    resumable: bool
    extension_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    progress: float
    message: str
    items: int
    bytes: int
    warnings: list[str]
    error: str | None
    output: Any
    checkpoint: Any
    checkpoints: int
    checkpoint_at: float | None
    interrupt_requested: str | None = None
    pause_reason: str | None = None  # "user", "shutdown", "disk full", "unload" ...
    input: Any = None
    transitions: list[Transition] | None = None
    type: str = ""  # the job type, e.g. "wasm_job"


class _Held(msgspec.Struct):
    """A state change that could not be written yet (a full disk)."""

    status: str
    kwargs: dict[str, Any]


class JobHandle:
    """Awaits one job's outcome."""

    def __init__(self, manager: JobManager, job_id: str) -> None:
        self._manager = manager
        self.job_id = job_id

    async def wait(self) -> Any:
        """The job's output once it completes; JobFailed / JobCancelled otherwise."""
        return await self._manager._wait(self.job_id)


def run_in_thread(fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread of its own; the future resolves on the loop.

    Daemon threads, not an executor: a job that ignores interruption must not
    keep the process alive after shutdown.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            try:
                loop.call_soon_threadsafe(settle, None, exc)
            except RuntimeError:
                pass
        else:
            try:
                loop.call_soon_threadsafe(settle, result, None)
            except RuntimeError:
                pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


class JobManager:
    """Jobs of one library. Use on the event loop's thread."""

    def __init__(self, library_id: str, db: Database, types: JobRegistry, bus: EventBus,
                 slots: asyncio.Semaphore, contexts: ContextRegistry) -> None:
        self.library_id = library_id
        self._db = db
        self._types = types
        self._bus = bus
        self._slots = slots
        self._contexts = contexts
        self._loop = asyncio.get_running_loop()
        self._running: dict[str, JobContext] = {}
        self._starting: set[str] = set()  # between taking a slot and running
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[store.JobRow]]] = {}
        self._closing = False
        # Full-disk bookkeeping (see the module docstring); dicts keep FIFO order.
        self._held: dict[str, _Held] = {}
        self._blocked: dict[str, None] = {}  # queued jobs that could not be marked running
        self._space_paused: dict[str, None] = {}
        self._retry: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Recover from the last stop, then start the persisted queue."""
        requeued, failed = await self._db.run(store.recover)
        for job_id in failed:
            log.warning("job %s failed: the daemon stopped while it was running", job_id)
        for job_id in requeued:
            log.info("job %s requeued after restart", job_id)
        for job_id in await self._db.run(store.queued_ids):
            self._schedule(job_id)

    async def shutdown(self, grace: float) -> None:
        """Ask running resumable jobs to pause, wait up to ``grace`` s, then let go.

        A resumable job still running after the grace period keeps its last
        checkpoint and is marked paused (reason ``shutdown``), so the next start
        resumes it; a non-resumable one is marked failed.
        """
        self._closing = True
        for job_id, task in list(self._tasks.items()):
            if job_id not in self._running and job_id not in self._starting:
                task.cancel()  # still waiting for a slot: it stays queued in the db
        for ctx in self._running.values():
            jt = self._types.get(ctx.name) if ctx.name in self._types else None
            if jt is not None and jt.resumable:
                ctx.request(Interrupt.PAUSE, "shutdown")
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for job_id, ctx in list(self._running.items()):
            resumable = ctx.name in self._types and self._types.get(ctx.name).resumable
            try:
                await self._db.run(functools.partial(
                    store.transition, job_id=job_id, status="paused" if resumable else "failed",
                    expect=("running",), progress=ctx.snapshot(),
                    pause_reason="shutdown" if resumable else None,
                    error=None if resumable else "the daemon stopped while this job was running",
                    note="still running at shutdown; resumes from its last checkpoint"
                    if resumable else None))
            except errors.SdError as e:  # a full disk or a damaged library: recovery at start
                log.warning("job %s: state at shutdown not saved: %s", job_id, e.message)
            self._contexts.unregister(job_id)
        for task in self._tasks.values():
            task.cancel()
        if self._retry is not None:
            self._retry.cancel()
        if self._held and not await self._write_held():
            log.warning("%d job state change(s) in library %s could not be written before "
                        "shutdown (no space); the next start recovers those jobs",
                        len(self._held), self.library_id)

    # --- public API --------------------------------------------------------------------
    async def dispatch_by_name(self, name: str, input: Any, *,
                               extension_id: str | None = None) -> str:
        """Validate, persist and queue a job; returns its id."""
        if self._closing:
            raise errors.ShuttingDown("the daemon is shutting down")
        jt = self._types.get(name)
        value = self._types.decode_input(jt, input)
        if hasattr(jt.input_type, "validate"):
            value.validate()
        input_json = _enc.encode(value)
        if extension_id is None and jt.owner is not None:
            extension_id = jt.owner(value)
        label = jt.label(value) if jt.label is not None else None
        job_id = str(uuid.uuid4())
        await self._db.run(lambda c: store.insert(c, job_id, name, input_json, jt.resumable,
                                                  extension_id, label))
        self._bus.publish(JobQueued(library_id=self.library_id, job_id=job_id,
                                    name=label or name))
        self._schedule(job_id)
        return job_id

    async def get_handle(self, job_id: str) -> JobHandle:
        await self._row(job_id)
        return JobHandle(self, job_id)

    async def info(self, job_id: str, *, transitions: bool = False) -> JobInfo:
        row = await self._row(job_id)
        trans = None
        if transitions:
            trans = [Transition(*t) for t in await self._db.run(
                lambda c: store.transitions(c, job_id))]
        return self._info(row, trans)

    async def list(self, status: str | None = None, limit: int = 100, *,
                   extension_id: str | None = None) -> builtins.list[JobInfo]:
        if status is not None and status not in store.STATUSES:
            raise errors.InvalidParams(f"unknown status {status!r}; one of {store.STATUSES}")
        rows = await self._db.run(lambda c: store.list_jobs(c, status, limit, extension_id))
        rows = [self._overlay(r) for r in rows]
        return [self._info(r, None) for r in rows if status is None or r.status == status]

    async def count_by_status(self) -> dict[str, int]:
        return await self._db.run(store.count_by_status)

    async def pause(self, job_id: str) -> str:
        """Pause a queued job now, or ask a running one to pause at its next check."""
        row = await self._row(job_id)
        if row.status == "running" and job_id in self._running:
            if not row.resumable:
                raise errors.InvalidState(f"job {job_id} ({row.title}) is not resumable, so it cannot pause")
            self._running[job_id].request(Interrupt.PAUSE, "user")
            return "pause_requested"
        if row.status == "queued":
            if await self._db.run(lambda c: store.transition(
                    c, job_id, "paused", expect=("queued",), pause_reason="user")):
                self._bus.publish(JobPaused(library_id=self.library_id, job_id=job_id, name=row.title))
                return "paused"
        raise errors.InvalidState(f"job {job_id} is {row.status}; only queued or running jobs pause")

    async def resume(self, job_id: str) -> str:
        if job_id in self._held and not await self._write_held():
            raise errors.DiskFull(f"job {job_id} cannot resume yet: its pause is not saved "
                                  f"because the disk is full", {"job_id": job_id})
        row = await self._row(job_id)
        if row.status != "paused":
            raise errors.InvalidState(f"job {job_id} is {row.status}; only paused jobs resume")
        if self._closing:
            raise errors.ShuttingDown("the daemon is shutting down")
        await self._db.run(lambda c: store.transition(c, job_id, "queued", expect=("paused",),
                                                      note="resumed"))
        self._space_paused.pop(job_id, None)
        self._bus.publish(JobResumed(library_id=self.library_id, job_id=job_id, name=row.title))
        self._schedule(job_id)
        return "queued"

    async def resume_extension_jobs(self, extension_id: str) -> int:
        """Resume the jobs that paused because ``extension_id`` was unloaded or missing."""
        ids = await self._db.run(lambda c: store.paused_for(c, extension_id, EXTENSION_PAUSES))
        for job_id in ids:
            await self.resume(job_id)
        return len(ids)

    async def cancel(self, job_id: str) -> str:
        """Cancel a job; it always ends, even when the disk is too full to say so yet."""
        row = await self._row(job_id)
        if row.status == "running" and job_id in self._running:
            self._running[job_id].request(Interrupt.CANCEL, "user")
            return "cancel_requested"
        if row.status in ("queued", "paused"):
            # A held pause is still "running" in the database: _set expects what it does.
            if await self._set(job_id, "cancelled", expect=("queued", "paused")):
                self._blocked.pop(job_id, None)
                self._space_paused.pop(job_id, None)
                self._finished(job_id, row.title, "cancelled", None, None)
                return "cancelled"
        raise errors.InvalidState(f"job {job_id} is {row.status}; it cannot be cancelled")

    # --- internals ---------------------------------------------------------------------
    async def _row(self, job_id: str) -> store.JobRow:
        row = await self._db.run(lambda c: store.get(c, job_id))
        if row is None:
            raise errors.NotFound(f"no job {job_id} in library {self.library_id}")
        return self._overlay(row)

    def _overlay(self, row: store.JobRow) -> store.JobRow:
        """The row as it will be once its held state change is written."""
        held = self._held.get(row.id)
        if held is None:
            return row
        kw = held.kwargs
        return msgspec.structs.replace(
            row, status=held.status, pause_reason=kw.get("pause_reason"),
            error=kw.get("error", row.error), output=kw.get("output", row.output))

    def _info(self, row: store.JobRow, trans: builtins.list[Transition] | None) -> JobInfo:
        ctx = self._running.get(row.id)
        info = JobInfo(
            id=row.id, library_id=self.library_id, name=row.title, type=row.name,
            status=row.status,
            resumable=row.resumable, extension_id=row.extension_id, created_at=row.created_at,
            started_at=row.started_at, finished_at=row.finished_at, updated_at=row.updated_at,
            progress=row.progress, message=row.message, items=row.items, bytes=row.bytes,
            warnings=row.warnings, error=row.error,
            output=None if row.output is None else msgspec.json.decode(row.output),
            checkpoint=None if row.checkpoint is None else msgspec.json.decode(row.checkpoint),
            checkpoints=row.checkpoints, checkpoint_at=row.checkpoint_at,
            pause_reason=row.pause_reason if row.status == "paused" else None,
            input=msgspec.json.decode(row.input), transitions=trans)
        if ctx is not None and row.status == "running":
            p = ctx.snapshot()
            info.progress, info.message, info.items, info.bytes = p.progress, p.message, p.items, p.bytes
            info.warnings = p.warnings
            if ctx.interrupt is not Interrupt.CONTINUE:
                info.interrupt_requested = ctx.interrupt.name.lower()
        return info

    def _schedule(self, job_id: str) -> None:
        if job_id in self._tasks and not self._tasks[job_id].done():
            return
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(functools.partial(self._forget_task, job_id))

    def _forget_task(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]

    async def _run(self, job_id: str) -> None:
        try:
            await self._run_job(job_id)
        except asyncio.CancelledError:
            raise
        except errors.SdError as e:  # e.g. the library became unavailable under the job
            log.warning("job %s stopped: %s", job_id, e.message)
        except Exception:
            log.exception("job %s: unexpected error in the job manager", job_id)

    async def _run_job(self, job_id: str) -> None:
        row = await self._db.run(lambda c: store.get(c, job_id))
        if row is None or row.status != "queued" or job_id in self._held:
            return
        try:
            jt = self._types.get(row.name)
            value = self._types.decode_input(jt, row.input)
        except errors.SdError as e:
            await self._fail(row, f"cannot start: {e.message}", None)
            return
        # A per-type gate (an extension's concurrent_jobs) is taken before the global
        # slot, so jobs waiting on their gate never hold a slot other jobs could use.
        gate = jt.gate(value) if jt.gate is not None else None
        async with gate if gate is not None else contextlib.nullcontext():
            async with self._slots:
                try:
                    ctx = await self._start(job_id, jt, value)
                except errors.DiskFull as e:
                    if not self._blocked:
                        log.warning("job %s cannot start: %s; it stays queued until there is "
                                    "room", job_id, e.message)
                    self._blocked[job_id] = None
                    self._need_retry()
                    return
                if ctx is None:
                    return
                try:
                    await self._execute(jt, ctx, value, row)
                finally:
                    self._running.pop(job_id, None)
                    self._contexts.unregister(job_id)

    async def _start(self, job_id: str, jt: JobType, value: Any) -> JobContext | None:
        """Move a queued job to running and register its context; None if it must not run."""
        self._starting.add(job_id)
        try:
            if self._closing:
                return None
            row = await self._db.run(lambda c: store.get(c, job_id))
            if row is None or row.status != "queued" or job_id in self._held:
                return None  # paused or cancelled while it waited
            resumed = row.checkpoint is not None
            ctx = JobContext(
                job_id=job_id, library_id=self.library_id, name=row.name, resumed=resumed,
                checkpoint=row.checkpoint, db=self._db, bus=self._bus, loop=self._loop,
                extension_id=row.extension_id, progress=row.progress, message=row.message,
                items=row.items, bytes_=row.bytes, warnings=row.warnings, title=row.title)
            note = jt.run_note(value) if jt.run_note is not None else None
            if not await self._db.run(lambda c: store.transition(
                    c, job_id, "running", expect=("queued",), note=note)):
                return None
            if self._closing:  # shutdown began while the row was being written
                await self._db.run(lambda c: store.transition(
                    c, job_id, "queued", expect=("running",), note="daemon stopping"))
                return None
            self._running[job_id] = ctx
            self._contexts.register(ctx)
        finally:
            self._starting.discard(job_id)
        self._bus.publish(JobStarted(library_id=self.library_id, job_id=job_id,
                                     name=row.title, resumed=resumed))
        return ctx

    async def _execute(self, jt: JobType, ctx: JobContext, value: Any, row: store.JobRow) -> None:
        job_id = row.id
        try:
            if jt.is_async:
                output = await jt.handler(ctx, value)
            else:
                output = await run_in_thread(jt.handler, ctx, value, name=f"job-{row.name}-{job_id[:8]}")
        except Interrupted:
            ctx.emit_progress_if_changed()
            if self._closing and ctx.interrupt_reason == "shutdown":
                await self._db.run(lambda c: store.transition(
                    c, job_id, "paused", expect=("running",), progress=ctx.snapshot(),
                    pause_reason="shutdown", note="paused for shutdown"))
                self._bus.publish(JobPaused(library_id=self.library_id, job_id=job_id, name=row.title))
                return
            if ctx.interrupt is Interrupt.CANCEL:
                await self._set(job_id, "cancelled", expect=("running",), progress=ctx.snapshot())
                self._finished(job_id, row.title, "cancelled", None, None)
            elif ctx.write_error is not None:
                await self._not_saved(jt, ctx, row, ctx.write_error)
            else:
                # "user" waits for an explicit resume; EXTENSION_PAUSES end when the
                # extension is loaded again (PluginManager's on_loaded).
                reason = ctx.interrupt_reason or "user"
                await self._set(job_id, "paused", expect=("running",), progress=ctx.snapshot(),
                                pause_reason=reason, note=None if reason == "user" else reason)
                self._bus.publish(JobPaused(library_id=self.library_id, job_id=job_id, name=row.title))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a job's failure is data, not a crash
            write_error = ctx.write_error or (e if isinstance(e, errors.DiskFull) else None)
            if write_error is not None and ctx.interrupt is not Interrupt.CANCEL:
                ctx.emit_progress_if_changed()
                await self._not_saved(jt, ctx, row, write_error)
                return
            msg = e.message if isinstance(e, errors.SdError) else (str(e) or type(e).__name__)
            if not isinstance(e, errors.SdError):
                log.info("job %s (%s) raised %s: %s", job_id, row.title, type(e).__name__, e)
            ctx.emit_progress_if_changed()
            await self._fail(row, msg, ctx)
            return
        ctx.emit_progress_if_changed()
        try:
            output_json = _enc.encode(output)
        except (TypeError, msgspec.EncodeError) as e:
            await self._fail(row, f"job output is not JSON-serialisable: {e}", ctx)
            return
        await self._set(job_id, "completed", expect=("running",), progress=ctx.snapshot(),
                        output=output_json)
        # Events carry small outputs only; a subscriber's queue must not hold megabytes.
        small = len(output_json) <= MAX_EVENT_OUTPUT_BYTES
        self._finished(job_id, row.title, "completed", output if small else None, None)

    async def _fail(self, row: store.JobRow, message: str, ctx: JobContext | None) -> None:
        progress = ctx.snapshot() if ctx is not None else None
        await self._set(row.id, "failed", expect=("running", "queued"), progress=progress,
                        error=message)
        self._finished(row.id, row.title, "failed", None, message)

    async def _not_saved(self, jt: JobType, ctx: JobContext, row: store.JobRow,
                         err: errors.SdError) -> None:
        """The job's checkpoint could not be written: pause it (fail it if not resumable)."""
        if isinstance(err, errors.LibraryUnavailable):
            return  # nothing can be written; the library is being isolated with its jobs
        if not jt.resumable:
            await self._fail(row, f"stopped: {err.message}", ctx)
            return
        log.warning("job %s (%s) paused: its checkpoint was not saved: %s",
                    row.id, row.title, err.message)
        await self._set(row.id, "paused", expect=("running",), progress=ctx.snapshot(),
                        pause_reason=DISK_FULL, note=err.message)
        self._space_paused[row.id] = None
        self._need_retry()
        self._bus.publish(JobPaused(library_id=self.library_id, job_id=row.id, name=row.title))

    # --- a full disk ---------------------------------------------------------------------
    async def _set(self, job_id: str, status: str, **kwargs: Any) -> bool:
        """Write a state change; on a full disk hold it (True) and write it once there is room."""
        held = self._held.get(job_id)
        if held is not None:
            kwargs["expect"] = held.kwargs["expect"]  # the database has not moved yet
        try:
            done = await self._db.run(functools.partial(
                store.transition, job_id=job_id, status=status, **kwargs))
        except errors.DiskFull as e:
            log.warning("job %s is %s, not saved yet: %s", job_id, status, e.message)
            self._held[job_id] = _Held(status, kwargs)
            self._need_retry()
            return True
        self._held.pop(job_id, None)
        return done

    async def _write_held(self) -> bool:
        """Write held state changes in order; False while the disk is still full."""
        for job_id, held in list(self._held.items()):
            try:
                await self._db.run(functools.partial(
                    store.transition, job_id=job_id, status=held.status, **held.kwargs))
            except errors.DiskFull:
                return False
            if self._held.get(job_id) is held:
                del self._held[job_id]
            log.info("job %s: %s saved now that there is room", job_id, held.status)
        return True

    def _need_retry(self) -> None:
        if not self._closing and (self._retry is None or self._retry.done()):
            self._retry = asyncio.create_task(self._retry_when_room(),
                                              name=f"space-retry-{self.library_id[:8]}")

    async def _retry_when_room(self) -> None:
        """Probe for room with a short backoff; then catch up on everything that waited."""
        delay = 0.1
        while not self._closing and (self._held or self._blocked or self._space_paused):
            await asyncio.sleep(delay)  # a backoff between probes, not synchronisation
            delay = min(delay * 2, SPACE_RETRY_MAX_S)
            try:
                if not await self._write_held():
                    continue
                blocked, self._blocked = list(self._blocked), {}
                for job_id in blocked:
                    self._schedule(job_id)  # blocks again (and is retried) if still full
                for job_id in list(self._space_paused):
                    try:
                        await self.resume(job_id)
                    except errors.DiskFull:
                        break
                    except errors.SdError:
                        self._space_paused.pop(job_id, None)  # cancelled, deleted ...
                    else:
                        log.info("job %s resumed: there is room again", job_id)
            except errors.SdError as e:  # e.g. the library became unavailable
                log.warning("library %s: giving up on writes held for lack of space: %s",
                            self.library_id, e.message)
                return

    def _finished(self, job_id: str, name: str, status: str, output: Any, error: str | None) -> None:
        if status == "completed":
            self._bus.publish(JobCompleted(library_id=self.library_id, job_id=job_id, name=name,
                                           output=output))
        elif status == "failed":
            self._bus.publish(JobFailed(library_id=self.library_id, job_id=job_id, name=name,
                                        error=error or ""))
        else:
            self._bus.publish(JobCancelled(library_id=self.library_id, job_id=job_id, name=name))
        for fut in self._waiters.pop(job_id, []):
            if not fut.done():
                fut.set_result(None)  # type: ignore[arg-type]

    async def _wait(self, job_id: str) -> Any:
        while True:
            row = await self._row(job_id)
            if row.status == "completed":
                return None if row.output is None else msgspec.json.decode(row.output)
            if row.status == "failed":
                raise errors.JobFailed(f"job {job_id} ({row.title}) failed: {row.error}",
                                       {"job_id": job_id, "error": row.error})
            if row.status == "cancelled":
                raise errors.JobCancelled(f"job {job_id} ({row.title}) was cancelled",
                                          {"job_id": job_id})
            fut: asyncio.Future[Any] = self._loop.create_future()
            self._waiters.setdefault(job_id, []).append(fut)
            # Re-check after registering, in case it finished in between.
            row = await self._row(job_id)
            if row.status in store.FINAL:
                continue
            await fut
