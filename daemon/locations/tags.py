"""Tags and their links to entries. Every function runs on the database thread."""

from __future__ import annotations

import sqlite3
import time

import msgspec

from daemon import errors
from daemon.libraries.db import transaction
from daemon.locations.store import resolve_tag

MAX_NAME = 128
MAX_IDS = 1000


class Tag(msgspec.Struct):
    id: int
    name: str
    color: str | None
    created_at: float
    entries: int


class Created(Tag):
    created: bool = True


def _tag(conn: sqlite3.Connection, tag_id: int) -> Tag:
    r = conn.execute("SELECT t.id, t.name, t.color, t.created_at, "
                     "(SELECT count(*) FROM entry_tags et WHERE et.tag_id = t.id) "
                     "FROM tags t WHERE t.id = ?", (tag_id,)).fetchone()
    return Tag(*r)


def create(conn: sqlite3.Connection, name: str, color: str | None) -> Created:
    """Create a tag; idempotent by name (an existing tag is returned with ``created: false``)."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise errors.InvalidParams(f"a tag name needs 1 to {MAX_NAME} characters")
    with transaction(conn):
        r = conn.execute("SELECT id FROM tags WHERE name = ?", (name,)).fetchone()
        if r is not None:
            return Created(**msgspec.structs.asdict(_tag(conn, r[0])), created=False)
        cur = conn.execute("INSERT INTO tags (name, color, created_at) VALUES (?, ?, ?)",
                           (name, color, time.time()))
    assert cur.lastrowid is not None
    return Created(**msgspec.structs.asdict(_tag(conn, cur.lastrowid)))


def list_tags(conn: sqlite3.Connection) -> list[Tag]:
    return [Tag(*r) for r in conn.execute(
        "SELECT t.id, t.name, t.color, t.created_at, "
        "(SELECT count(*) FROM entry_tags et WHERE et.tag_id = t.id) FROM tags t ORDER BY t.name")]


def _check_ids(entry_ids: list[int]) -> list[int]:
    if len(entry_ids) > MAX_IDS:
        raise errors.TooLarge(f"at most {MAX_IDS} entry ids per call")
    return sorted(set(entry_ids))


def apply(conn: sqlite3.Connection, tag: int | str, entry_ids: list[int]) -> dict[str, object]:
    """Tag entries; returns how many links are new and which ids are unknown."""
    ids = _check_ids(entry_ids)
    with transaction(conn):
        tag_id = resolve_tag(conn, tag)
        known = {i for (i,) in conn.execute(
            f"SELECT id FROM entries WHERE missing = 0 AND id IN ({', '.join('?' * len(ids))})",
            ids)} if ids else set()
        now = time.time()
        n = conn.executemany("INSERT OR IGNORE INTO entry_tags (tag_id, entry_id, created_at) "
                             "VALUES (?, ?, ?)", [(tag_id, i, now) for i in sorted(known)]).rowcount
    return {"tag_id": tag_id, "applied": max(n, 0), "unknown": [i for i in ids if i not in known]}


def remove(conn: sqlite3.Connection, tag: int | str, entry_ids: list[int]) -> dict[str, object]:
    ids = _check_ids(entry_ids)
    with transaction(conn):
        tag_id = resolve_tag(conn, tag)
        n = conn.executemany("DELETE FROM entry_tags WHERE tag_id = ? AND entry_id = ?",
                             [(tag_id, i) for i in ids]).rowcount
    return {"tag_id": tag_id, "removed": max(n, 0)}


def delete(conn: sqlite3.Connection, tag: int | str) -> int:
    with transaction(conn):
        tag_id = resolve_tag(conn, tag)
        conn.execute("DELETE FROM tags WHERE id = ?", (tag_id,))
    return tag_id
