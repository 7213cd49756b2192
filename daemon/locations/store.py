"""Locations and entries in a library database. Every function runs on the database thread."""

from __future__ import annotations

import sqlite3
import time
from pathlib import PurePosixPath
from typing import Any, Literal

import msgspec

from daemon import errors
from daemon.libraries import deferred
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
    watch: bool = True  # persisted: watch this location for changes
    # Live state of the watch (daemon.locations.watch): "watching", "off", "fallback: ..."
    watch_state: str = ""
    watch_note: str = ""  # the last fallback to a rescan, and why


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
           (SELECT count(*) FROM entries e WHERE e.location_id = l.id)
           - (SELECT count(*) FROM entries e WHERE e.location_id = l.id AND e.missing = 1),
           l.index_job_id, j.status, l.watch = 1
    FROM locations l LEFT JOIN jobs j ON j.id = l.index_job_id
"""


def insert_location(conn: sqlite3.Connection, path: str, name: str, watch: bool = True) -> int:
    """Add a location; refuses one that equals, contains or is inside an existing one."""
    new = PurePosixPath(path)
    with transaction(conn):
        for loc_id, other in conn.execute("SELECT id, path FROM locations"):
            old = PurePosixPath(other)
            if new == old or new.is_relative_to(old) or old.is_relative_to(new):
                raise errors.InvalidState(
                    f"{path} overlaps location {loc_id} ({other}); locations may not nest",
                    {"location_id": loc_id, "path": other})
        cur = conn.execute("INSERT INTO locations (path, name, created_at, watch) "
                           "VALUES (?, ?, ?, ?)", (path, name, time.time(), int(watch)))
    assert cur.lastrowid is not None
    return cur.lastrowid


def list_locations(conn: sqlite3.Connection) -> list[Location]:
    return [_location(r) for r in conn.execute(_LOCATION_SQL + " ORDER BY l.id")]


def _location(r: tuple[Any, ...]) -> Location:
    loc = Location(*r[:-1])
    loc.watch = bool(r[-1])
    return loc


def get_location(conn: sqlite3.Connection, location_id: int) -> Location:
    r = conn.execute(_LOCATION_SQL + " WHERE l.id = ?", (location_id,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no location {location_id}", {"location_id": location_id})
    return _location(r)


def location_root(conn: sqlite3.Connection, location_id: int) -> str:
    r = conn.execute("SELECT path FROM locations WHERE id = ?", (location_id,)).fetchone()
    if r is None:
        raise errors.NotFound(f"no location {location_id}", {"location_id": location_id})
    return str(r[0])


def require_location(conn: sqlite3.Connection, location_id: int) -> None:
    location_root(conn, location_id)


def set_watch(conn: sqlite3.Connection, location_id: int, on: bool) -> None:
    require_location(conn, location_id)
    conn.execute("UPDATE locations SET watch = ? WHERE id = ?", (int(on), location_id))


def watched_locations(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """(id, root) of every location to watch."""
    return [(int(i), str(p)) for i, p in conn.execute(
        "SELECT id, path FROM locations WHERE watch = 1 ORDER BY id")]


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


def delete_missing(conn: sqlite3.Connection, location_id: int,
                   ids: list[int] | None = None) -> int:
    """Delete the location's entries marked missing, with the subtrees of missing
    directories, in the caller's transaction; returns how many rows went (and adds their
    ids to ``ids`` when given)."""
    removed = 0
    for (path,) in conn.execute("SELECT path FROM entries WHERE location_id = ? AND missing = 1 "
                                "AND kind = 'dir'", (location_id,)).fetchall():
        removed += delete_subtree(conn, location_id, path, ids)
    return removed + _delete(conn, "DELETE FROM entries WHERE location_id = ? AND missing = 1",
                             (location_id,), ids)


def delete_subtree(conn: sqlite3.Connection, location_id: int, path: str,
                   ids: list[int] | None = None) -> int:
    """Delete the descendants of ``path`` (not ``path`` itself); returns how many rows
    went (and adds their ids to ``ids`` when given)."""
    # '/' + 1 == '0': [path/, path0) is exactly the paths under path.
    return _delete(conn, "DELETE FROM entries WHERE location_id = ? AND path >= ? AND path < ?",
                   (location_id, path + "/", path + "0"), ids)


def _delete(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...],
            ids: list[int] | None) -> int:
    if ids is None:
        return int(conn.execute(sql, args).rowcount)
    gone = [r[0] for r in conn.execute(sql + " RETURNING id", args)]
    ids.extend(gone)
    return len(gone)


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


# Keyset pages are served by an index in the page's order wherever one filter names it
# (migration 5); otherwise the rows matching the driving filter are sorted, which is
# bounded by that filter's selectivity (a tag, a cas_id, a directory). Indexes are
# named (INDEXED BY) rather than left to the planner, so a page costs the same on a
# library of any size whether or not ANALYZE has run; tests check the plans. While a bulk
# first walk has an index deferred (daemon.libraries.deferred) it is not named: the page
# is then found without it (slower, same rows).
_ORDERED_BY_ID = {  # driving filter -> index whose entries follow id within one key
    "cas_id": "entries_by_cas_id",
    "parent": "entries_by_parent",
    "extension": "entries_by_extension",
    "kind": "entries_rare_kind",
    "location_id": "entries_by_location",
}
_ORDERED_BY_SIZE = {  # driving filter -> index in (size, id) order within one key
    "extension": "entries_by_extension_size",
    "kind": "entries_rare_kind_size",
    "location_id": "entries_by_size",
}
# min_size with order=id: sort the matching ids when at most this many match, else
# walk the primary key (then at least this many of the library's rows match).
MIN_SIZE_SORT_LIMIT = 5_000


def entries_sql(conn: sqlite3.Connection, q: EntryQuery) -> tuple[str, list[Any]]:
    """The SQL (and arguments) selecting the ids of one page, ``limit + 1`` of them.

    Without a filter that has an index of its own in size order, a size page is the
    merge of each location's (location_id, size) range: no library-wide size index to
    keep up on every insert.
    """
    if not 1 <= q.limit <= MAX_PAGE:
        raise errors.InvalidParams(f"limit must be between 1 and {MAX_PAGE}")
    if q.parent is not None and q.location_id is None:
        raise errors.InvalidParams("the parent filter needs location_id")
    key = _parse_cursor(q.cursor, q.order) if q.cursor is not None else None
    absent = deferred.missing(conn)

    def hint(index: str) -> str:
        return "" if index in absent else f"INDEXED BY {index}"

    rare_kind = q.kind is not None and q.kind != "file"
    given = {"cas_id": q.cas_id, "parent": q.parent, "extension": q.extension,
             "kind": q.kind if rare_kind else None, "location_id": q.location_id}
    # The most selective filter that has an index drives the page.
    driver = next((f for f in ("cas_id", "parent", "extension", "kind", "location_id")
                   if given[f] is not None), None)
    if q.min_size is not None and q.order == "size" and (key is None or (q.min_size, 0) > key):
        # (size, id) > (min_size, 0) is size >= min_size: the range starts there.
        key = (q.min_size, 0)
    if q.tag is not None:
        # entry_tags walks one tag's entries in id order (its primary key) or in size
        # order (entry_tags_by_size: its size column follows the entry's, migration 7).
        head = ("SELECT e.id FROM entry_tags t " + ("INDEXED BY entry_tags_by_size "
                                                    if q.order == "size" else "")
                + "CROSS JOIN entries e ON e.id = t.entry_id")
        where, args = _filters(q, key, "t.entry_id", "t.size")
        return _page(head, ["t.tag_id = ?", *where], [resolve_tag(conn, q.tag), *args], q,
                     "t.entry_id", "t.size")
    where, args = _filters(q, key, "e.id")
    if q.order == "id":
        index = _ORDERED_BY_ID.get(driver) if driver else None
        if (index is None and q.min_size is not None
                and _few_at_least(conn, q.min_size, hint("entries_by_size"))):
            # Few match: sort their ids, found in each location's size range.
            return _page("SELECT e.id FROM entries e " + hint("entries_by_size"),
                         ["e.location_id IN (SELECT id FROM locations)", *where], args, q, "e.id")
        return _page("SELECT e.id FROM entries e " + (hint(index) if index else "NOT INDEXED"),
                     where, args, q, "e.id")
    if driver is not None:
        index = _ORDERED_BY_SIZE.get(driver) or _ORDERED_BY_ID[driver]  # else: sort the few
        return _page(f"SELECT e.id FROM entries e {hint(index)}", where, args, q, "e.id")
    head = "SELECT e.id, e.size FROM entries e " + hint("entries_by_size")
    arms = [_page(head, ["e.location_id = ?", *where], [loc, *args], q, "e.id")
            for (loc,) in conn.execute("SELECT id FROM locations ORDER BY id")]
    if not arms:
        return "SELECT NULL WHERE 0", []
    if len(arms) == 1:
        return arms[0]
    return (" UNION ALL ".join(f"SELECT * FROM ({sql})" for sql, _ in arms)
            + " ORDER BY 2, 1 LIMIT ?", [a for _, arm_args in arms for a in arm_args]
            + [q.limit + 1])


def _filters(q: EntryQuery, key: tuple[int, ...] | None, id_col: str,
             size_col: str = "e.size") -> tuple[list[str], list[Any]]:
    """WHERE terms and their arguments for every filter and the cursor, but the tag."""
    where: list[str] = ["e.missing = 0"]
    args: list[Any] = []
    for column in ("location_id", "parent", "cas_id"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"e.{column} = ?")
            args.append(value)
    if q.kind is not None:
        # The literal lets SQLite use the partial indexes of the rare kinds.
        where.append(f"e.kind = '{q.kind}'" + (" AND e.kind != 'file'" if q.kind != "file" else ""))
    if q.extension is not None:
        where.append("e.extension = ?")
        args.append(q.extension.lstrip(".").lower())
    if q.min_size is not None:
        # With a size cursor, the cursor (not min_size) must start the index range.
        where.append("+e.size >= ?" if key is not None and q.order == "size" else "e.size >= ?")
        args.append(q.min_size)
    if key is not None:
        where.append(f"{id_col} > ?" if q.order == "id" else f"({size_col}, {id_col}) > (?, ?)")
        args.extend(key)
    return where, args


def _page(head: str, where: list[str], args: list[Any], q: EntryQuery,
          id_col: str, size_col: str = "e.size") -> tuple[str, list[Any]]:
    order = f" ORDER BY {id_col}" if q.order == "id" else f" ORDER BY {size_col}, {id_col}"
    return head + " WHERE " + " AND ".join(where) + order + " LIMIT ?", [*args, q.limit + 1]


def _few_at_least(conn: sqlite3.Connection, min_size: int, hint: str) -> bool:
    """Whether at most MIN_SIZE_SORT_LIMIT entries have ``size >= min_size`` (index-only)."""
    n = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM entries {hint} "
                     "WHERE location_id IN (SELECT id FROM locations) AND size >= ? LIMIT ?)",
                     (min_size, MIN_SIZE_SORT_LIMIT + 1)).fetchone()[0]
    return int(n) <= MIN_SIZE_SORT_LIMIT


def list_entries(conn: sqlite3.Connection, q: EntryQuery) -> EntryPage:
    """One page in keyset order (``id``, or ``size`` then ``id``); ``next_cursor`` continues it."""
    sql, args = entries_sql(conn, q)
    ids = [r[0] for r in conn.execute(sql, args)]
    more = len(ids) > q.limit
    ids = ids[:q.limit]
    by_id = {r[0]: _entry(r) for r in conn.execute(
        f"SELECT {_ENTRY_COLS} FROM entries e WHERE e.id IN ({', '.join('?' * len(ids))})",
        ids)} if ids else {}
    rows = [by_id[i] for i in ids]
    cursor = None
    if more:
        last = rows[-1]
        cursor = f"id:{last.id}" if q.order == "id" else f"size:{last.size}:{last.id}"
    return EntryPage(rows, cursor)


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


# Rows ANALYZE samples per index (PRAGMA analysis_limit): statistics good enough for the
# planner in milliseconds, even on millions of entries.
ANALYSIS_LIMIT = 1000


def refresh_statistics(conn: sqlite3.Connection) -> None:
    """Bring the planner's statistics up to date (after an index job changed many rows)."""
    conn.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
    conn.execute("ANALYZE")


def count_unhashed(conn: sqlite3.Connection, location_id: int) -> int:
    return int(conn.execute(
        "SELECT count(*) FROM entries WHERE location_id = ? AND kind = 'file' "
        "AND cas_id IS NULL AND missing = 0", (location_id,)).fetchone()[0])


def unhashed_files(conn: sqlite3.Connection, location_id: int, after: int,
                   limit: int) -> list[tuple[int, str, int, int]]:
    """(id, path, size, mtime_ns) of the next ``limit`` files without a cas_id, by id.

    Fetched as one JSON array: a single step, during which SQLite works without the
    GIL (row by row, every row would hand the GIL back and forth with the hashing)."""
    raw = conn.execute(_UNHASHED_JSON, (location_id, after, limit)).fetchone()[0]
    rows = _unhashed_decoder.decode(raw)
    rows.sort()  # an aggregate's input order is not promised; ids are unique
    return rows


_UNHASHED_JSON = (
    "SELECT json_group_array(json_array(id, path, size, mtime_ns)) FROM ("
    "SELECT id, path, size, mtime_ns FROM entries WHERE location_id = ? AND kind = 'file' "
    "AND cas_id IS NULL AND missing = 0 AND id > ? ORDER BY id LIMIT ?)")
_unhashed_decoder = msgspec.json.Decoder(list[tuple[int, str, int, int]])
