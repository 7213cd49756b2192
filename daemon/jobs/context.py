"""JobContext: what a running job sees, and the registry that finds it by id.

A context lives exactly as long as one run of a job. Its counters are live
(readable from any thread while the job runs); they reach the database at
every checkpoint and every state transition. A checkpoint outlives a kill; the
live counters between two checkpoints do not.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import msgspec

from daemon import errors
from daemon.events import EventBus, JobProgress
from daemon.jobs import store

if TYPE_CHECKING:
    from daemon.libraries.db import Database

log = logging.getLogger("sd.jobs")

# A job keeps this many warnings (then counts them) and logs the first few.
MAX_WARNINGS = 1000
MAX_LOGGED_WARNINGS = 100
# At most this many progress events per second per job; the last one always follows.
PROGRESS_EVENTS_PER_S = 10
_MIN_GAP = 1.0 / PROGRESS_EVENTS_PER_S
# The pause reason of a job whose checkpoint could not be written for lack of space;
# such jobs resume by themselves once there is room.
DISK_FULL = store.DISK_FULL


class Interrupt(enum.IntEnum):
    """What ``check_interrupt`` answers; the values are the guest ABI's."""

    CONTINUE = 0
    PAUSE = 1
    CANCEL = 2


class Interrupted(Exception):
    """Raised by a handler (or ``raise_if_interrupted``) to stop at a pause/cancel request."""


_encoder = msgspec.json.Encoder()


class JobContext:
    """The live state of one job run. Thread-safe for the calls a handler makes."""

    def __init__(
        self,
        *,
        job_id: str,
        library_id: str,
        name: str,
        resumed: bool,
        checkpoint: bytes | None,
        db: Database,
        bus: EventBus,
        loop: asyncio.AbstractEventLoop,
        extension_id: str | None = None,
        progress: float = 0.0,
        message: str = "",
        items: int = 0,
        bytes_: int = 0,
        warnings: list[str] | None = None,
        title: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.library_id = library_id
        self.name = name  # the job type's
        self.title = title or name  # what the job is called where it is shown
        self.resumed = resumed
        self.extension_id = extension_id
        self.checkpoint_bytes = checkpoint
        self.progress = progress
        self.message = message
        self.items = items
        self.bytes = bytes_
        self.warnings: list[str] = list(warnings or [])
        self.checkpoints = 0
        self.interrupt = Interrupt.CONTINUE
        self.interrupt_reason: str | None = None  # "user", "shutdown", DISK_FULL ...
        # Why the last checkpoint could not be written (a full disk, a damaged library).
        self.write_error: errors.SdError | None = None
        self._db = db
        self._bus = bus
        self._loop = loop
        self._lock = threading.Lock()
        self._last_emit = 0.0
        self._emitted = (progress, message, items, bytes_)
        self._flush_scheduled = False

    # --- state handed to the job --------------------------------------------
    @property
    def db(self) -> Database:
        """The library's database (from the job's thread: ``ctx.db.run_sync(fn)``)."""
        return self._db

    @property
    def state(self) -> Any:
        """The last checkpointed state (decoded JSON), or None on a first run."""
        return None if self.checkpoint_bytes is None else msgspec.json.decode(self.checkpoint_bytes)

    # --- reporting --------------------------------------------------------------
    def report_progress(self, fraction: float, message: str = "") -> None:
        if fraction != fraction:  # NaN
            fraction = 0.0
        self.progress = min(max(float(fraction), 0.0), 1.0)
        self.message = message
        self._changed()

    def increment_items(self, n: int = 1) -> None:
        with self._lock:
            self.items += int(n)
        self._changed()

    def increment_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += int(n)
        self._changed()

    def add_warning(self, message: str) -> None:
        """Record a warning; past MAX_WARNINGS they are only counted (in the last entry)."""
        with self._lock:
            n = len(self.warnings)
            if n < MAX_WARNINGS:
                self.warnings.append(message)
            elif n == MAX_WARNINGS:
                self.warnings.append("1 more warning not kept")
            else:
                more = int(self.warnings[-1].split(" ", 1)[0]) + 1
                self.warnings[-1] = f"{more} more warnings not kept"
        if n < MAX_LOGGED_WARNINGS:
            log.warning("job %s (%s): %s", self.job_id, self.title, message)

    def log(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, "job %s (%s): %s", self.job_id, self.title, message)

    # --- interruption --------------------------------------------------------------
    def request(self, interrupt: Interrupt, reason: str = "user") -> None:
        """Ask the job to pause or cancel at its next ``check_interrupt``."""
        if interrupt > self.interrupt:  # cancel wins over pause
            self.interrupt = interrupt
            self.interrupt_reason = reason

    def check_interrupt(self) -> Interrupt:
        return self.interrupt

    def raise_if_interrupted(self) -> None:
        if self.interrupt is not Interrupt.CONTINUE:
            raise Interrupted()

    # --- checkpoints -------------------------------------------------------------------
    def checkpoint(self, state: Any) -> None:
        """Durably save ``state``: it is committed to the library database on return.

        Blocks the calling thread; from a coroutine use ``checkpoint_async``.
        """
        if _on_loop(self._loop):
            raise RuntimeError("JobContext.checkpoint blocks; use checkpoint_async on the event loop")
        try:
            self._db.run_sync(self._checkpoint_fn(state))
        except (errors.DiskFull, errors.LibraryUnavailable) as e:
            self._not_saved(e)
            raise

    def checkpoint_later(self, state: Any) -> Future[None]:
        """Queue ``checkpoint(state)`` on the database thread and return at once: whatever
        the caller queues next runs after it. ``result()`` of the future raises what
        ``checkpoint`` would (and a failure asks the job to stop, as there)."""
        try:
            fut = self._db.submit(self._checkpoint_fn(state))
        except (errors.DiskFull, errors.LibraryUnavailable) as e:
            self._not_saved(e)
            raise

        def failed(f: Future[None]) -> None:
            e = f.exception()
            if isinstance(e, (errors.DiskFull, errors.LibraryUnavailable)):
                self._not_saved(e)
        fut.add_done_callback(failed)
        return fut

    async def checkpoint_async(self, state: Any) -> None:
        try:
            await self._db.run(self._checkpoint_fn(state))
        except (errors.DiskFull, errors.LibraryUnavailable) as e:
            self._not_saved(e)
            raise

    def checkpoint_raw(self, state_json: bytes) -> None:
        """Like ``checkpoint`` for state that is already JSON bytes (the WASM job's)."""
        try:
            self._db.run_sync(self._checkpoint_fn(None, state_json))
        except (errors.DiskFull, errors.LibraryUnavailable) as e:
            self._not_saved(e)
            raise

    def _not_saved(self, e: errors.SdError) -> None:
        """A checkpoint could not be written: the job is asked to stop where it is."""
        self.write_error = e
        self.request(Interrupt.PAUSE, DISK_FULL if isinstance(e, errors.DiskFull)
                     else "library unavailable")

    def _checkpoint_fn(self, state: Any, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else _encoder.encode(state)
        snapshot = self.snapshot()

        def write(conn: Any) -> None:
            store.save_checkpoint(conn, self.job_id, data, snapshot)
            self.checkpoint_bytes = data
            self.checkpoints += 1

        return write

    def snapshot(self) -> store.Progress:
        with self._lock:
            return store.Progress(self.progress, self.message, self.items, self.bytes,
                                  list(self.warnings))

    # --- coalesced progress events ------------------------------------------------------
    def _changed(self) -> None:
        now = time.monotonic()
        if now - self._last_emit >= _MIN_GAP:
            self._last_emit = now
            self._emit_threadsafe()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            delay = _MIN_GAP - (now - self._last_emit)
            try:
                self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._flush)
            except RuntimeError:
                pass

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._last_emit = time.monotonic()
        self.emit_progress_if_changed()

    def _emit_threadsafe(self) -> None:
        if _on_loop(self._loop):
            self.emit_progress_if_changed()
        else:
            try:
                self._loop.call_soon_threadsafe(self.emit_progress_if_changed)
            except RuntimeError:
                pass

    def emit_progress_if_changed(self) -> None:
        """Publish a progress event unless the last one already said the same. Loop only."""
        current = (self.progress, self.message, self.items, self.bytes)
        if current == self._emitted:
            return
        self._emitted = current
        self._bus.publish(JobProgress(
            library_id=self.library_id, job_id=self.job_id, name=self.title,
            progress=current[0], message=current[1], items=current[2], bytes=current[3]))


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class ContextRegistry:
    """Job id -> live JobContext, for code that only holds an id (host functions)."""

    def __init__(self) -> None:
        self._contexts: dict[str, JobContext] = {}

    def register(self, ctx: JobContext) -> None:
        self._contexts[ctx.job_id] = ctx

    def unregister(self, job_id: str) -> None:
        self._contexts.pop(job_id, None)

    def get(self, job_id: str) -> JobContext | None:
        return self._contexts.get(job_id)

    def of_extension(self, extension_id: str) -> list[JobContext]:
        return [c for c in list(self._contexts.values()) if c.extension_id == extension_id]

    def __len__(self) -> int:
        return len(self._contexts)
