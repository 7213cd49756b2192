"""Libraries and the manager that creates, finds and deletes them.

A library is the directory ``<data-dir>/libraries/<uuid>/`` holding
``library.db``; its name and creation time live inside that database, so the
directory is the whole library and nothing else has to agree with it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from pathlib import Path

import msgspec

from daemon import errors
from daemon.events import EventBus, LibraryCreated, LibraryDeleted
from daemon.jobs.context import ContextRegistry
from daemon.jobs.manager import JobManager
from daemon.jobs.types import JobRegistry
from daemon.libraries.db import Database, transaction
from daemon.libraries.schema import MIGRATIONS

log = logging.getLogger("sd.libraries")


class LibraryInfo(msgspec.Struct):
    id: str
    name: str
    created_at: float
    path: str


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
        self._lock = asyncio.Lock()

    async def load_all(self) -> None:
        """Open every library under the root (after a restart)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.iterdir()):
            if not (path / "library.db").exists():
                continue
            try:
                uuid.UUID(path.name)
                lib = await self._open(path)
            except Exception as e:  # noqa: BLE001 - one bad library must not stop the daemon
                log.error("cannot open library at %s: %s", path, e)
                continue
            self._libraries[lib.id] = lib
        log.info("%d libraries open", len(self._libraries))

    async def start_jobs(self) -> None:
        for lib in self._libraries.values():
            await lib.jobs.start()

    async def _open(self, path: Path) -> Library:
        db = await asyncio.to_thread(Database, path / "library.db", MIGRATIONS)
        meta = dict(await db.run(lambda c: c.execute("SELECT key, value FROM library").fetchall()))
        lib_id = meta.get("id", path.name)
        if lib_id != path.name:
            await db.close()
            raise ValueError(f"library id {lib_id} does not match its directory {path.name}")
        jobs = JobManager(lib_id, db, self._job_types, self._bus, self._slots, self._contexts)
        return Library(lib_id, str(meta.get("name", lib_id)), float(meta.get("created_at", 0)),
                       path, db, jobs)

    async def create_library(self, name: str) -> Library:
        name = name.strip()
        if not name:
            raise errors.InvalidParams("a library needs a non-empty name")
        lib_id = str(uuid.uuid4())
        path = self.root / lib_id
        path.mkdir(parents=True)
        created = time.time()
        db = await asyncio.to_thread(Database, path / "library.db", MIGRATIONS)

        def write_meta(conn: object) -> None:
            with transaction(conn) as c:  # type: ignore[arg-type]
                c.executemany("INSERT INTO library (key, value) VALUES (?, ?)",
                              [("id", lib_id), ("name", name), ("created_at", repr(created))])
        await db.run(write_meta)
        jobs = JobManager(lib_id, db, self._job_types, self._bus, self._slots, self._contexts)
        lib = Library(lib_id, name, created, path, db, jobs)
        self._libraries[lib_id] = lib
        await jobs.start()
        log.info("created library %s (%s)", lib_id, name)
        self._bus.publish(LibraryCreated(library_id=lib_id, name=name))
        return lib

    def list(self) -> list[Library]:
        return sorted(self._libraries.values(), key=lambda lib: (lib.created_at, lib.id))

    def get(self, library_id: str) -> Library:
        lib = self._libraries.get(library_id)
        if lib is None:
            raise errors.LibraryNotFound(f"no library with id {library_id}",
                                         {"library_id": library_id})
        return lib

    def __len__(self) -> int:
        return len(self._libraries)

    async def delete_library(self, library_id: str) -> None:
        async with self._lock:
            lib = self.get(library_id)
            del self._libraries[library_id]
            await lib.jobs.shutdown(grace=2.0)
            await lib.db.close()
            await asyncio.to_thread(shutil.rmtree, lib.path)
        log.info("deleted library %s (%s)", library_id, lib.name)
        self._bus.publish(LibraryDeleted(library_id=library_id))

    async def close_all(self, grace: float) -> None:
        """Pause jobs (see JobManager.shutdown), then close every database."""
        libs = list(self._libraries.values())
        await asyncio.gather(*(lib.jobs.shutdown(grace) for lib in libs))
        await asyncio.gather(*(lib.db.close() for lib in libs))
        self._libraries.clear()
