"""Extension storage: a key-value store per namespace in each library database.

The namespace is always the caller's identity, chosen by the operation layer
(never by the caller). Values are JSON, stored as their encoded bytes.
"""

from __future__ import annotations

import sqlite3
import time

import msgspec

from daemon import errors
from daemon.libraries.db import transaction

MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
MAX_KEYS = 100_000
MAX_PAGE = 1000


class Item(msgspec.Struct):
    key: str
    value: msgspec.Raw
    updated_at: float


class KeyInfo(msgspec.Struct):
    key: str
    bytes: int
    updated_at: float


def check_key(key: str) -> None:
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise errors.InvalidParams(f"a key needs 1 to {MAX_KEY_BYTES} bytes")


def put(conn: sqlite3.Connection, ns: str, key: str, value: bytes) -> None:
    check_key(key)
    if len(value) > MAX_VALUE_BYTES:
        raise errors.TooLarge(f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES} bytes")
    with transaction(conn):
        exists = conn.execute("SELECT 1 FROM extension_storage WHERE extension_id = ? AND key = ?",
                              (ns, key)).fetchone()
        if exists is None and conn.execute(
                "SELECT count(*) FROM extension_storage WHERE extension_id = ?",
                (ns,)).fetchone()[0] >= MAX_KEYS:
            raise errors.TooLarge(f"at most {MAX_KEYS} keys per extension and library")
        conn.execute("INSERT OR REPLACE INTO extension_storage (extension_id, key, value, updated_at) "
                     "VALUES (?, ?, ?, ?)", (ns, key, value, time.time()))


def get(conn: sqlite3.Connection, ns: str, key: str) -> Item | None:
    check_key(key)
    r = conn.execute("SELECT key, value, updated_at FROM extension_storage "
                     "WHERE extension_id = ? AND key = ?", (ns, key)).fetchone()
    return None if r is None else Item(r[0], msgspec.Raw(r[1]), r[2])


def keys(conn: sqlite3.Connection, ns: str, prefix: str, after: str | None,
         limit: int) -> tuple[list[KeyInfo], str | None]:
    """Keys starting with ``prefix``, in order, after ``after``; (page, next cursor)."""
    if not 1 <= limit <= MAX_PAGE:
        raise errors.InvalidParams(f"limit must be between 1 and {MAX_PAGE}")
    rows = [KeyInfo(*r) for r in conn.execute(
        "SELECT key, length(value), updated_at FROM extension_storage WHERE extension_id = ? "
        "AND substr(key, 1, ?) = ? AND key > ? ORDER BY key LIMIT ?",
        (ns, len(prefix), prefix, after or "", limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].key if more else None)


def items(conn: sqlite3.Connection, ns: str, prefix: str, limit: int) -> list[Item]:
    return [Item(r[0], msgspec.Raw(r[1]), r[2]) for r in conn.execute(
        "SELECT key, value, updated_at FROM extension_storage WHERE extension_id = ? "
        "AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?", (ns, len(prefix), prefix, limit))]


def delete(conn: sqlite3.Connection, ns: str, key: str) -> bool:
    check_key(key)
    with transaction(conn):
        return conn.execute("DELETE FROM extension_storage WHERE extension_id = ? AND key = ?",
                            (ns, key)).rowcount > 0
