"""Secondary indexes (and triggers) dropped for a bulk load and made again afterwards.

Inserting rows into a table with several indexes writes each index at a random
place per row; building an index from the finished table is one sorted pass,
several times cheaper. ``defer`` drops a table's indexes (all but those named to
keep), and any trigger named, and records each one's SQL in ``deferred_indexes``
in the same transaction;
``restore`` makes them again, one transaction per index, deleting its record as it
commits it. So the record and the schema always agree: whatever stops the process,
an index is either there or recorded, never lost. A library database restores any
recorded index when it is opened, before its migrations (``Database``).

Readers must not name a deferred index (``INDEXED BY`` fails when it is missing):
``missing`` says which are. On a ``Database``'s connection it reads the table once and
keeps the answer on the connection until ``defer`` or ``restore`` writes the table
(every statement runs on that connection's one thread), so a page of entries costs no
statement for it; a database reopened (a restart) starts with nothing known.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Collection

from daemon.libraries.db import Connection, transaction

log = logging.getLogger("sd.db")

TABLE = "deferred_indexes"


def defer(conn: sqlite3.Connection, table: str, keep: Collection[str],
          triggers: Collection[str] = ()) -> list[str]:
    """Drop ``table``'s indexes but those in ``keep`` (and the automatic ones of its
    UNIQUE constraints), and the named ``triggers``, recording how to make each again;
    returns their names."""
    try:
        with transaction(conn):
            rows = conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
                "AND ((type = 'index' AND name NOT IN (SELECT value FROM json_each(?))) "
                "OR (type = 'trigger' AND name IN (SELECT value FROM json_each(?)))) ORDER BY name",
                (table, json.dumps(sorted(keep)), json.dumps(sorted(triggers)))).fetchall()
            now = time.time()
            for kind, name, sql in rows:
                conn.execute(f"INSERT OR REPLACE INTO {TABLE} (name, tbl, sql, deferred_at) "
                             "VALUES (?, ?, ?, ?)", (name, table, sql, now))
                conn.execute(f'DROP {"TRIGGER" if kind == "trigger" else "INDEX"} "{name}"')
    finally:  # committed or rolled back: read again
        _forget(conn)
    return [name for _, name, _ in rows]


def missing(conn: sqlite3.Connection) -> frozenset[str]:
    """The names of what is deferred now (dropped, not yet made again)."""
    known = conn.deferred if isinstance(conn, Connection) else None
    if known is None:
        known = frozenset(name for (name,) in conn.execute(f"SELECT name FROM {TABLE}"))
        if isinstance(conn, Connection):
            conn.deferred = known
    return known


def _forget(conn: sqlite3.Connection) -> None:
    if isinstance(conn, Connection):
        conn.deferred = None


def restore(conn: sqlite3.Connection,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Make every deferred index again; returns how many. ``progress(done, total)`` is
    called before each one. A failure (a full disk) leaves the rest recorded."""
    rows = conn.execute(f"SELECT name, sql FROM {TABLE} ORDER BY name").fetchall()
    try:
        for done, (name, sql) in enumerate(rows):
            if progress is not None:
                progress(done, len(rows))
            with transaction(conn):
                exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                                      (name,)).fetchone()
                if exists is None:
                    conn.execute(sql)
                conn.execute(f"DELETE FROM {TABLE} WHERE name = ?", (name,))
    finally:  # all made again, or some still recorded: read again
        _forget(conn)
    return len(rows)


def restore_on_open(conn: sqlite3.Connection, path: object) -> None:
    """At open, before migrations: make again what a stopped bulk load left deferred.

    A failure (no space to build them) is logged, not raised: every reader works
    without the indexes, and the next index job or open tries again.
    """
    known = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                         (TABLE,)).fetchone()
    if known is None:
        return
    names = sorted(missing(conn))
    if not names:
        return
    log.warning("%s: making again what a bulk load left deferred: %s", path, ", ".join(names))
    t0 = time.monotonic()
    try:
        restore(conn)
    except (sqlite3.Error, OSError) as e:
        log.error("%s: could not make the deferred indexes again (%s); queries work without "
                  "them, the next index job or open tries again", path, e)
        return
    log.info("%s: made again in %.1f s", path, time.monotonic() - t0)
