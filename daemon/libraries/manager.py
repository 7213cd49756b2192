"""Libraries and the manager that creates, finds, checks and deletes them.

A library is the directory ``<data-dir>/libraries/<uuid>/`` holding
``library.db``; its name and creation time live inside that database, so the
directory is the whole library and nothing else has to agree with it.

Creating one is atomic: the database is built and its name committed in
``.creating-<uuid>/``, which is then renamed to ``<uuid>/``; a crash at any point
leaves a complete library or only a ``.creating-`` leftover, removed at the next start.

A library whose database cannot be opened, or reports damage while in use, is
isolated: it stays listed with state ``unavailable`` and the reason (naming its
file), operations on it answer ``LibraryUnavailable``, it can be checked and
deleted, and every other library goes on.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from daemon import errors
from daemon.events import EventBus, LibraryCreated, LibraryDeleted
from daemon.events import LibraryUnavailable as LibraryUnavailableEvent
from daemon.jobs.context import ContextRegistry
from daemon.jobs.manager import JobManager
from daemon.jobs.types import JobRegistry
from daemon.libraries import deferred
from daemon.libraries.db import Database, classify, transaction
from daemon.libraries.schema import MIGRATIONS

log = logging.getLogger("sd.libraries")
CREATING = ".creating-"
DB_NAME = "library.db"
MAX_CHECK_PROBLEMS = 100


class LibraryInfo(msgspec.Struct):
    id: str
    name: str
    created_at: float
    path: str
    state: str = "available"  # or "unavailable"
    error: str | None = None  # why it is unavailable, naming the file


class CheckResult(msgspec.Struct):
    id: str
    path: str
    ok: bool
    problems: list[str]
    state: str


class Library:
    """One open library: its database and its job manager."""

    def __init__(self, id: str, name: str, created_at: float, path: Path, db: Database,
                 jobs: JobManager) -> None:
        self.id = id
        self.name = name
        self.created_at = created_at
        self.path = path
        self.db = db
        self.jobs = jobs

    def info(self) -> LibraryInfo:
        return LibraryInfo(self.id, self.name, self.created_at, str(self.path))


@dataclass
class UnavailableLibrary:
    id: str
    path: Path
    reason: str
    name: str = ""
    created_at: float = 0.0

    def info(self) -> LibraryInfo:
        return LibraryInfo(self.id, self.name, self.created_at, str(self.path),
                           "unavailable", self.reason)

    def error(self) -> errors.LibraryUnavailable:
        return errors.LibraryUnavailable(
            f"library {self.id} is unavailable: {self.reason}",
            {"library_id": self.id, "reason": self.reason, "path": str(self.path)})


class LibraryManager:
    """All libraries of one data dir."""

    def __init__(self, root: Path, bus: EventBus, job_types: JobRegistry,
                 job_slots: asyncio.Semaphore, contexts: ContextRegistry) -> None:
        self.root = root
        self._bus = bus
        self._job_types = job_types
        self._slots = job_slots
        self._contexts = contexts
        self._libraries: dict[str, Library] = {}
        self._unavailable: dict[str, UnavailableLibrary] = {}
        self._lock = asyncio.Lock()
        # Isolated libraries whose jobs are still stopping and database still closing.
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._loop = asyncio.get_running_loop()
        # Called with a library about to be deleted, before its jobs stop and its db closes.
        self.before_close: list[Callable[[Library], Awaitable[None]]] = []

    async def load_all(self) -> None:
        """Open every library under the root (after a restart); isolate those that fail."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(CREATING):
                log.info("removing %s, left by a library create that did not finish", path)
                await asyncio.to_thread(shutil.rmtree, path, True)
                continue
            try:
                uuid.UUID(path.name)
            except ValueError:
                continue
            if not path.is_dir():
                continue
            if not (path / DB_NAME).exists():
                if not any(path.iterdir()):
                    path.rmdir()  # an empty directory left by an older sd's interrupted create
                else:
                    self._mark_unavailable(path.name, path, f"{path / DB_NAME} is missing")
                continue
            try:
                lib = await self._open(path)
            except Exception as e:  # noqa: BLE001 - one bad library must not stop the daemon
                self._mark_unavailable(path.name, path, _reason(e, path / DB_NAME))
                continue
            self._libraries[lib.id] = lib
        log.info("%d libraries open, %d unavailable", len(self._libraries), len(self._unavailable))

    async def start_jobs(self) -> None:
        for lib in list(self._libraries.values()):
            try:
                await lib.jobs.start()
            except Exception as e:  # noqa: BLE001 - e.g. damage found while recovering jobs
                await self._isolate(lib, _reason(e, lib.db.path))

    async def _open(self, path: Path) -> Library:
        lib_id = path.name
        db = await asyncio.to_thread(Database, path / DB_NAME, MIGRATIONS,
                                     lambda reason: self._corrupt_from_thread(lib_id, reason),
                                     deferred.restore_on_open)
        try:
            meta = dict(await db.run(
                lambda c: c.execute("SELECT key, value FROM library").fetchall()))
            if meta.get("id") != path.name or "name" not in meta:
                raise errors.LibraryUnavailable(
                    f"{path / DB_NAME} has no library identity for {path.name} "
                    f"(id {meta.get('id')!r}, name {meta.get('name')!r})")
        except BaseException:
            await db.close()
            raise
        jobs = JobManager(lib_id, db, self._job_types, self._bus, self._slots, self._contexts)
        return Library(lib_id, str(meta["name"]), float(meta.get("created_at", 0)), path, db, jobs)

    async def create_library(self, name: str) -> Library:
        name = name.strip()
        if not name:
            raise errors.InvalidParams("a library needs a non-empty name")
        lib_id = str(uuid.uuid4())
        tmp = self.root / f"{CREATING}{lib_id}"
        path = self.root / lib_id
        created = time.time()
        try:
            await asyncio.to_thread(tmp.mkdir, parents=True)
            db = await asyncio.to_thread(Database, tmp / DB_NAME, MIGRATIONS)

            def write_meta(conn: sqlite3.Connection) -> None:
                with transaction(conn) as c:
                    c.executemany("INSERT INTO library (key, value) VALUES (?, ?)",
                                  [("id", lib_id), ("name", name), ("created_at", repr(created))])
            try:
                await db.run(write_meta)
            finally:
                await db.close()
            await asyncio.to_thread(_publish_dir, tmp, path)
        except BaseException as e:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            err = classify(e, tmp) if isinstance(e, (OSError, sqlite3.Error)) else None
            if err is not None:
                raise err from e
            raise
        try:
            lib = await self._open(path)
            self._libraries[lib_id] = lib
            await lib.jobs.start()
        except BaseException:
            # Named but not usable: take it back, so the client's error means "no library".
            self._libraries.pop(lib_id, None)
            await asyncio.to_thread(shutil.rmtree, path, True)
            raise
        log.info("created library %s (%s)", lib_id, name)
        self._bus.publish(LibraryCreated(library_id=lib_id, name=name))
        return lib

    def list(self) -> list[Library]:
        """The libraries that can be used."""
        return sorted(self._libraries.values(), key=lambda lib: (lib.created_at, lib.id))

    def infos(self) -> builtins.list[LibraryInfo]:
        """Every library, unavailable ones too."""
        infos = [lib.info() for lib in self._libraries.values()]
        infos += [u.info() for u in self._unavailable.values()]
        return sorted(infos, key=lambda i: (i.created_at, i.id))

    def info(self, library_id: str) -> LibraryInfo:
        bad = self._unavailable.get(library_id)
        return bad.info() if bad is not None else self.get(library_id).info()

    def get(self, library_id: str) -> Library:
        lib = self._libraries.get(library_id)
        if lib is None:
            bad = self._unavailable.get(library_id)
            if bad is not None:
                raise bad.error()
            raise errors.LibraryNotFound(f"no library with id {library_id}",
                                         {"library_id": library_id})
        return lib

    def __len__(self) -> int:
        return len(self._libraries)

    @property
    def unavailable_count(self) -> int:
        return len(self._unavailable)

    async def delete_library(self, library_id: str) -> None:
        async with self._lock:
            bad = self._unavailable.pop(library_id, None)
            if bad is not None:
                closing = self._closing.get(library_id)
                if closing is not None:  # isolated a moment ago: its database is still open
                    await asyncio.wait({closing})
                await asyncio.to_thread(shutil.rmtree, bad.path, True)
                name = bad.name
            else:
                lib = self.get(library_id)
                del self._libraries[library_id]
                await self._take_down(lib, grace=2.0)
                await asyncio.to_thread(shutil.rmtree, lib.path)
                name = lib.name
        log.info("deleted library %s (%s)", library_id, name)
        self._bus.publish(LibraryDeleted(library_id=library_id))

    async def check(self, library_id: str) -> CheckResult:
        """SQLite's full integrity check; a library found damaged is isolated."""
        lib = self._libraries.get(library_id)
        if lib is None and library_id not in self._unavailable:
            self.get(library_id)  # raises LibraryNotFound
        path = lib.path if lib is not None else self._unavailable[library_id].path
        problems = await asyncio.to_thread(integrity_problems, path / DB_NAME)
        if problems and lib is not None and self._libraries.get(library_id) is lib:
            await self._isolate(lib, f"{path / DB_NAME} failed its integrity check: {problems[0]}")
        state = "available" if library_id in self._libraries else "unavailable"
        return CheckResult(library_id, str(path / DB_NAME), not problems, problems, state)

    def _mark_unavailable(self, lib_id: str, path: Path, reason: str,
                          name: str = "", created_at: float = 0.0) -> None:
        log.error("library %s is unavailable: %s", lib_id, reason)
        self._unavailable[lib_id] = UnavailableLibrary(lib_id, path, reason, name, created_at)
        self._bus.publish(LibraryUnavailableEvent(library_id=lib_id, reason=reason))

    def _corrupt_from_thread(self, lib_id: str, reason: str) -> None:
        """``Database.on_corrupt``: runs on the database thread."""
        def isolate() -> None:
            lib = self._libraries.get(lib_id)
            if lib is not None:
                task = asyncio.ensure_future(self._isolate(lib, reason))
                task.add_done_callback(_log_failure)
        try:
            self._loop.call_soon_threadsafe(isolate)
        except RuntimeError:
            pass  # the loop is closed: the daemon is stopping

    async def _isolate(self, lib: Library, reason: str) -> None:
        """Take a damaged library out of service: its jobs stop, its database closes."""
        if self._libraries.get(lib.id) is not lib:
            return
        del self._libraries[lib.id]
        self._mark_unavailable(lib.id, lib.path, reason, lib.name, lib.created_at)
        # A task of its own, held here: a delete of the library and the daemon's shutdown
        # wait for it, and it finishes even if the caller that found the damage goes away.
        task = asyncio.ensure_future(self._take_down(lib, grace=1.0))
        self._closing[lib.id] = task
        task.add_done_callback(lambda _: self._closing.pop(lib.id, None))
        await asyncio.shield(task)

    async def _take_down(self, lib: Library, grace: float) -> None:
        """Stop a library that left ``_libraries``: watchers, then its jobs, then its database."""
        for callback in self.before_close:
            await callback(lib)
        await lib.jobs.shutdown(grace=grace)
        await lib.db.close()

    async def close_all(self, grace: float) -> None:
        """Pause jobs (see JobManager.shutdown), then close every database."""
        libs = list(self._libraries.values())
        await asyncio.gather(*(lib.jobs.shutdown(grace) for lib in libs))
        await asyncio.gather(*(lib.db.close() for lib in libs))
        self._libraries.clear()
        if self._closing:  # isolated libraries still closing
            await asyncio.wait(list(self._closing.values()))


def integrity_problems(db_path: Path) -> list[str]:
    """``PRAGMA integrity_check`` on its own read-only connection; [] when it says ok."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            rows = [str(r[0]) for r in conn.execute(
                f"PRAGMA integrity_check({MAX_CHECK_PROBLEMS})")]
        finally:
            conn.close()
    except sqlite3.Error as e:
        return [f"{db_path}: {e}"]
    return [] if rows == ["ok"] else rows


def _publish_dir(tmp: Path, path: Path) -> None:
    """Make the finished library durable, then give it its name in one rename."""
    for f in (tmp / DB_NAME, tmp):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(e: BaseException, db_path: Path) -> str:
    msg = e.message if isinstance(e, errors.SdError) else f"{type(e).__name__}: {e}"
    return msg if str(db_path) in msg or str(db_path.parent) in msg else f"{db_path}: {msg}"


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("isolating a library failed: %r", task.exception())
