"""A SQLite database owned by one dedicated thread.

Every statement runs on that thread, so the event loop never waits on disk and
the connection is never shared between threads. Coroutines use ``run``; code
already on a worker thread (a job handler) uses ``run_sync``.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash
or ``kill -9`` of the daemon; a power loss may lose the last few commits.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("sd.db")


class Database:
    """One SQLite file and the single thread that talks to it."""

    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{path.parent.name[:8]}")
        self._thread_id: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._executor.submit(self._open, list(migrations)).result()

    def _open(self, migrations: list[str]) -> None:
        self._thread_id = threading.get_ident()
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            conn.close()
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this sd "
                f"understands ({len(migrations)})")
        for number, script in enumerate(migrations[version:], start=version + 1):
            log.info("migrating %s to schema version %d", self.path, number)
            conn.execute("BEGIN")
            try:
                for stmt in script.split(";\n"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                conn.close()
                raise
        self._conn = conn

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Queue ``fn(conn)`` on the database thread."""
        return self._executor.submit(self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is closed")
        return fn(self._conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the database thread and await its result."""
        return await asyncio.wrap_future(self.submit(fn))

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` and block until it is done. Never call on the event loop."""
        if threading.get_ident() == self._thread_id:
            return self._call(fn)
        return self.submit(fn).result()

    async def close(self) -> None:
        """Finish queued statements, then close the connection and the thread."""
        def _close(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA optimize")
            conn.close()
            self._conn = None
        try:
            await self.run(_close)
        finally:
            self._executor.shutdown(wait=False)


def transaction(conn: sqlite3.Connection) -> _Tx:
    """``with transaction(conn):`` runs the block in BEGIN IMMEDIATE ... COMMIT."""
    return _Tx(conn)


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
