"""A SQLite database owned by one dedicated thread.

Every statement runs on that thread, so the event loop never waits on disk and
the connection is never shared between threads. Coroutines use ``run``; code
already on a worker thread (a job handler) uses ``run_sync``.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash
or ``kill -9`` of the daemon; a power loss may lose the last few commits.

SQLite's errors that a user can cause leave this module as SdErrors: a full disk
(SQLITE_FULL, ENOSPC) as ``DiskFull``, a damaged file (SQLITE_CORRUPT,
SQLITE_NOTADB) as ``LibraryUnavailable`` naming the file, which also calls
``on_corrupt`` so the owner can isolate the database. A failed statement never
leaves a transaction open.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from daemon import errors

T = TypeVar("T")
log = logging.getLogger("sd.db")

SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 10, 11, 13, 26
# An I/O error with less free space than this is taken for a full disk (SQLite reports
# ENOSPC while growing the WAL index as SQLITE_IOERR_SHMSIZE, not SQLITE_FULL).
_LOW_SPACE_BYTES = 1 << 20


def disk_full(path: Path, detail: object) -> errors.DiskFull:
    return errors.DiskFull(
        f"the disk holding {path} is full ({detail}); free some space and try again "
        f"(nothing already saved was lost)", {"path": str(path)})


def classify(e: BaseException, path: Path) -> errors.SdError | None:
    """The SdError for a storage failure a user can cause, or None for anything else."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(path, e.strerror or e)
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code == SQLITE_FULL or (code == SQLITE_IOERR and _low_space(path)):
            return disk_full(path, e)
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return errors.LibraryUnavailable(f"{path} is damaged: {e}", {"path": str(path)})
    return None


def _low_space(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < _LOW_SPACE_BYTES
    except OSError:
        return False


class Connection(sqlite3.Connection):
    """A Database's connection: sqlite3's, with what ``daemon.libraries.deferred`` knows
    is deferred (None: not known; it then reads its table). Only the database thread
    touches either, so the two cannot disagree between statements."""

    deferred: frozenset[str] | None = None


class Database:
    """One SQLite file and the single thread that talks to it."""

    def __init__(self, path: Path, migrations: Sequence[str],
                 on_corrupt: Callable[[str], None] | None = None,
                 before_migrations: Callable[[sqlite3.Connection, Path], None] | None = None
                 ) -> None:
        self.path = path
        self._before_migrations = before_migrations
        self.on_corrupt = on_corrupt  # called on the database thread with the reason
        self.corrupt: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{path.parent.name[:8]}")
        self._thread_id: int | None = None
        self._conn: sqlite3.Connection | None = None
        try:
            self._executor.submit(self._open, list(migrations)).result()
        except BaseException as e:
            self._executor.shutdown(wait=False)
            err = classify(e, path)
            if err is not None:
                raise err from e
            raise

    def _open(self, migrations: list[str]) -> None:
        self._thread_id = threading.get_ident()
        conn = sqlite3.connect(self.path, isolation_level=None, factory=Connection)
        try:
            self._prepare(conn, migrations)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection, migrations: list[str]) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # ANALYZE (and PRAGMA optimize at close) samples this many rows per index:
        # milliseconds on a million entries instead of seconds.
        conn.execute("PRAGMA analysis_limit=1000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version <= len(migrations) and self._before_migrations is not None:
            self._before_migrations(conn, self.path)
        if version > len(migrations):
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
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Queue ``fn(conn)`` on the database thread."""
        if self._conn is None:
            raise self._closed_error()
        return self._executor.submit(self._call, fn)

    def _closed_error(self) -> errors.LibraryUnavailable:
        """What a statement meets after close: a request that found the library just
        before it was deleted or isolated gets this, not an internal error."""
        reason = self.corrupt or (f"{self.path} is closed: its library was deleted or "
                                  f"taken out of service")
        return errors.LibraryUnavailable(reason, {"path": str(self.path)})

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise self._closed_error()
        try:
            return fn(conn)
        except (sqlite3.Error, OSError) as e:
            _rollback(conn)
            err = classify(e, self.path)
            if err is None:
                raise
            if isinstance(err, errors.LibraryUnavailable) and self.corrupt is None:
                self.corrupt = err.message
                log.error("%s", err.message)
                if self.on_corrupt is not None:
                    self.on_corrupt(err.message)
            raise err from e

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the database thread and await its result."""
        return await asyncio.wrap_future(self.submit(fn))

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` and block until it is done. Never call on the event loop."""
        if threading.get_ident() == self._thread_id:
            return self._call(fn)
        return self.submit(fn).result()

    async def close(self) -> None:
        """Finish queued statements, then close the connection and the thread. Never raises."""
        def _close() -> None:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                _rollback(conn)
                if self.corrupt is None:
                    conn.execute("PRAGMA optimize")
            except sqlite3.Error as e:
                log.warning("closing %s: %s", self.path, e)
            finally:
                conn.close()
        try:
            await asyncio.wrap_future(self._executor.submit(_close))
        except RuntimeError:
            pass  # already shut down
        finally:
            self._executor.shutdown(wait=False)


def _rollback(conn: sqlite3.Connection) -> None:
    """End a transaction a failed statement left open (e.g. a COMMIT on a full disk)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.warning("rollback failed: %s", e)


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
        if exc_type:
            _rollback(self.conn)
            return
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            _rollback(self.conn)
            raise
