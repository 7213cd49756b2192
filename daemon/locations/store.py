"""Locations and entries in a library database. Every function runs on the database thread."""

from __future__ import annotations

import sqlite3
import time
from pathlib import PurePosixPath
from typing import Any, Literal

import msgspec

from daemon import errors
from daemon.libraries.db import transaction

Kind = Literal["file", "dir", "symlink", "other"]
MAX_PAGE = 1000
ACTIVE_JOB = ("queued", "running", "paused")


class Location(msgspec.Struct):
    id: int
    name: str
    path: str
    created_at: float
    indexed_at: float | None
    entries: int
    index_job_id: str | None
    index_status: str | None


class Entry(msgspec.Struct):
    id: int
    location_id: int
    path: str  # relative to the location root, '/'-separated
    parent: str  # '' at the top of the location
    name: str
    extension: str  # lower case, no dot; '' for none
    kind: Kind
    size: int  # bytes for files and symlinks; 0 for directories
    mtime: float
    inode: int
    cas_id: str | None
    dev: int = 0  # st_dev: (dev, inode) names one file; hard links share it


class EntryDetail(Entry):
    tags: list[str] = []


class EntryQuery(msgspec.Struct, forbid_unknown_fields=True):
    """Filters of ``query:entries.list.v1``; every given one must match."""

    location_id: int | None = None
    parent: str | None = None  # needs location_id; '' is the location's top level
    extension: str | None = None
    kind: Kind | None = None
    tag: int | str | None = None
    cas_id: str | None = None
    min_size: int | None = None
    order: Literal["id", "size"] = "id"
    cursor: str | None = None
    limit: int = 100


class EntryPage(msgspec.Struct):
    entries: list[Entry]
    next_cursor: str | None


# --- locations -------------------------------------------------------------------------------
_LOCATION_SQL = """
    SELECT l.id, l.name, l.path, l.created_at, l.indexed_at,
           (SELECT count(*) FROM entries e WHERE e.location_id = l.id AND e.missing = 0),
           l.index_job_id, j.status
    FROM locations l LEFT JOIN jobs j ON j.id = l.index_job_id
"""


def insert_location(conn: sqlite3.Connection, path: str, name: str) -> int:
    """Add a location; refuses one that equals, contains or is inside an existing one."""
    new = PurePosixPath(path)
    with transaction(conn):
        for loc_id, other in conn.execute("SELECT id, path FROM locations"):
            old = PurePosixPath(other)
            if new == old or new.is_relative_to(old) or old.is_relative_to(new):
                raise errors.InvalidState(
                    f"{path} overlaps location {loc_id} ({other}); locations may not nest",
                    {"location_id": loc_id, "path": other})
        cur = conn.execute("INSERT INTO locations (path, name, created_at) VALUES (?, ?, ?)",
                           (path, name, time.time()))
    assert cur.lastrowid is not None
    return cur.lastrowid


def list_locations(conn: sqlite3.Connection) -> list[Location]:
    return [Location(*r) for r in conn.execute(_LOCATION_SQL + " ORDER BY l.id")]


def get_location(conn: sqlite3.Connection, location_id: int) -> Location:
    r = conn.execute(_LOCATION_SQL + " WHERE l.id = ?", (location_id,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no location {location_id}", {"location_id": location_id})
    return Location(*r)


def location_root(conn: sqlite3.Connection, location_id: int) -> str:
    r = conn.execute("SELECT path FROM locations WHERE id = ?", (location_id,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no location {location_id}", {"location_id": location_id})
    return str(r[0])


def require_location(conn: sqlite3.Connection, location_id: int) -> None:
    location_root(conn, location_id)


def set_index_job(conn: sqlite3.Connection, location_id: int, job_id: str) -> None:
    conn.execute("UPDATE locations SET index_job_id = ? WHERE id = ?", (job_id, location_id))


def active_jobs(conn: sqlite3.Connection, location_id: int, names: tuple[str, ...],
                status: tuple[str, ...] = ACTIVE_JOB) -> list[str]:
    """Jobs of these types and statuses (default: queued, running, paused) working on the
    location, oldest first."""
    rows = conn.execute(
        f"SELECT id, input FROM jobs WHERE status IN ({', '.join('?' * len(status))}) "
        f"AND name IN ({', '.join('?' * len(names))}) ORDER BY seq", (*status, *names)).fetchall()
    return [job_id for job_id, raw in rows
            if msgspec.json.decode(raw).get("location_id") == location_id]


def delete_location(conn: sqlite3.Connection, location_id: int) -> int:
    """Delete a location with its entries (and their tags); returns the entries removed."""
    require_location(conn, location_id)
    with transaction(conn):
        n = conn.execute("DELETE FROM entries WHERE location_id = ?", (location_id,)).rowcount
        conn.execute("DELETE FROM locations WHERE id = ?", (location_id,))
    return n


# --- entries -----------------------------------------------------------------------------------
_ENTRY_COLS = ("e.id, e.location_id, e.path, e.parent, e.name, e.extension, e.kind, e.size, "
               "e.mtime_ns, e.inode, e.cas_id, e.dev")


def _entry(r: tuple[Any, ...]) -> Entry:
    v = list(r)
    v[8] = v[8] / 1e9
    return Entry(*v)


def _parse_cursor(cursor: str, order: str) -> tuple[int, ...]:
    try:
        tag, *nums = cursor.split(":")
        values = tuple(int(n) for n in nums)
    except ValueError:
        values, tag = (), ""
    if tag != order or len(values) != (1 if order == "id" else 2):
        raise errors.InvalidParams(f"invalid cursor {cursor!r} for order {order!r}")
    return values


def resolve_tag(conn: sqlite3.Connection, tag: int | str) -> int:
    if isinstance(tag, int):
        r = conn.execute("SELECT id FROM tags WHERE id = ?", (tag,)).fetchone()
    else:
        r = conn.execute("SELECT id FROM tags WHERE name = ?", (tag,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no tag {tag!r}", {"tag": tag})
    return int(r[0])


def list_entries(conn: sqlite3.Connection, q: EntryQuery) -> EntryPage:
    """One page in keyset order (``id``, or ``size`` then ``id``); ``next_cursor`` continues it."""
    sql, args = entries_sql(conn, q)
    rows = [_entry(r) for r in conn.execute(sql, args)]
    more = len(rows) > q.limit
    rows = rows[:q.limit]
    cursor = None
    if more:
        last = rows[-1]
        cursor = f"id:{last.id}" if q.order == "id" else f"size:{last.size}:{last.id}"
    return EntryPage(rows, cursor)


def entries_sql(conn: sqlite3.Connection, q: EntryQuery) -> tuple[str, list[Any]]:
    """The statement and arguments of one page of ``list_entries`` (one row more than asked)."""
    if not 1 <= q.limit <= MAX_PAGE:
        raise errors.InvalidParams(f"limit must be between 1 and {MAX_PAGE}")
    if q.parent is not None and q.location_id is None:
        raise errors.InvalidParams("the parent filter needs location_id")
    sql = f"SELECT {_ENTRY_COLS} FROM entries e"
    where: list[str] = ["e.missing = 0"]
    args: list[Any] = []
    if q.tag is not None:
        sql += " JOIN entry_tags t ON t.entry_id = e.id AND t.tag_id = ?"
        args.append(resolve_tag(conn, q.tag))
    for column, value in (("location_id", q.location_id), ("parent", q.parent),
                          ("kind", q.kind), ("cas_id", q.cas_id)):
        if value is not None:
            where.append(f"e.{column} = ?")
            args.append(value)
    if q.extension is not None:
        where.append("e.extension = ?")
        args.append(q.extension.lstrip(".").lower())
    min_size = q.min_size
    if q.cursor is not None:
        key = _parse_cursor(q.cursor, q.order)
        if q.order == "id":
            where.append("e.id > ?")
            args.append(key[0])
        else:
            # One lower bound on size (the larger of min_size and the cursor's), so that the
            # index range starts at the cursor: a page costs the same at any depth.
            size, after_id = key
            min_size = size if min_size is None else max(min_size, size)
            where.append("(e.size > ? OR e.id > ?)")
            args.extend((size, after_id))
    if min_size is not None:
        where.append("e.size >= ?")
        args.append(min_size)
    sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY e.id" if q.order == "id" else " ORDER BY e.size, e.id"
    sql += " LIMIT ?"
    args.append(q.limit + 1)
    return sql, args


def get_entry(conn: sqlite3.Connection, entry_id: int) -> EntryDetail:
    r = conn.execute(f"SELECT {_ENTRY_COLS} FROM entries e WHERE e.id = ? AND e.missing = 0",
                     (entry_id,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no entry {entry_id}", {"entry_id": entry_id})
    tags = [t for (t,) in conn.execute(
        "SELECT t.name FROM entry_tags et JOIN tags t ON t.id = et.tag_id "
        "WHERE et.entry_id = ? ORDER BY t.name", (entry_id,))]
    return EntryDetail(**msgspec.structs.asdict(_entry(r)), tags=tags)


def entry_file(conn: sqlite3.Connection, entry_id: int) -> tuple[str, str, str]:
    """(location root, relative path, kind) of an entry."""
    r = conn.execute("SELECT l.path, e.path, e.kind FROM entries e "
                     "JOIN locations l ON l.id = e.location_id WHERE e.id = ? AND e.missing = 0",
                     (entry_id,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no entry {entry_id}", {"entry_id": entry_id})
    return str(r[0]), str(r[1]), str(r[2])


def count_unhashed(conn: sqlite3.Connection, location_id: int) -> int:
    return int(conn.execute(
        "SELECT count(*) FROM entries WHERE location_id = ? AND kind = 'file' "
        "AND cas_id IS NULL AND missing = 0", (location_id,)).fetchone()[0])


def unhashed_files(conn: sqlite3.Connection, location_id: int, after: int,
                   limit: int) -> list[tuple[int, str, int, int]]:
    return list(conn.execute(
        "SELECT id, path, size, mtime_ns FROM entries WHERE location_id = ? AND kind = 'file' "
        "AND cas_id IS NULL AND missing = 0 AND id > ? ORDER BY id LIMIT ?",
        (location_id, after, limit)))
