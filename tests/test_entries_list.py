"""``entries.list`` pages: right rows in the right order through every filter, order and
cursor, and query plans that stay cheap at any depth (issue 15).

Real SQLite with the real migrations; no timing (the bench measures speed).
"""

from __future__ import annotations

import itertools
import random
import sqlite3
from typing import Any

import pytest

from daemon.libraries.schema import MIGRATIONS
from daemon.locations import store

KINDS = ("file", "file", "file", "file", "dir", "symlink", "other")
EXTS = ("txt", "jpg", "", "md")


def library(n: int = 3000, seed: int = 7) -> tuple[sqlite3.Connection, list[dict[str, Any]]]:
    """A library of two locations with ``n`` random entries, some missing, tagged, hashed."""
    conn = sqlite3.connect(":memory:")
    for m in MIGRATIONS:
        conn.executescript(m)
    conn.execute("INSERT INTO locations (path, name, created_at) VALUES ('/a', 'a', 0)")
    conn.execute("INSERT INTO locations (path, name, created_at) VALUES ('/b', 'b', 0)")
    conn.execute("INSERT INTO tags (name, created_at) VALUES ('red', 0)")
    conn.execute("INSERT INTO tags (name, created_at) VALUES ('blue', 0)")
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rnd.choice(KINDS)
        ext = rnd.choice(EXTS) if kind == "file" else ""
        parent = rnd.choice(("", "d1", "d2", "d2/x"))
        name = f"n{i}" + (f".{ext}" if ext else "")
        row = {"id": i + 1, "location_id": rnd.choice((1, 1, 2)), "parent": parent,
               "path": f"{parent}/{name}" if parent else name, "name": name, "extension": ext,
               "kind": kind, "size": rnd.randrange(0, 40) if kind != "dir" else 0,
               "cas_id": rnd.choice((None, "c1", "c2", "c3")) if kind == "file" else None,
               "missing": int(rnd.random() < 0.05), "tags": {t for t in (1, 2) if rnd.random() < 0.2}}
        rows.append(row)
    conn.executemany(
        "INSERT INTO entries (id, location_id, path, parent, name, extension, kind, size, "
        "mtime_ns, dev, inode, cas_id, missing) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?, ?)",
        [(r["id"], r["location_id"], r["path"], r["parent"], r["name"], r["extension"],
          r["kind"], r["size"], r["id"], r["cas_id"], r["missing"]) for r in rows])
    conn.executemany("INSERT INTO entry_tags (tag_id, entry_id, created_at) VALUES (?, ?, 0)",
                     [(t, r["id"]) for r in rows for t in r["tags"]])
    return conn, rows


FILTERS: list[dict[str, Any]] = [
    {}, {"location_id": 2}, {"location_id": 1, "parent": "d2"}, {"location_id": 1, "parent": ""},
    {"extension": "txt"}, {"extension": ".TXT"}, {"kind": "file"}, {"kind": "dir"},
    {"kind": "symlink"}, {"tag": "red"}, {"tag": 2}, {"cas_id": "c2"}, {"min_size": 30},
    {"min_size": 0}, {"location_id": 1, "extension": "jpg"},
    {"location_id": 2, "kind": "file", "min_size": 5}, {"tag": "blue", "extension": "md"},
    {"cas_id": "c1", "location_id": 2}, {"kind": "other", "min_size": 20},
]


def expected(rows: list[dict[str, Any]], f: dict[str, Any], order: str) -> list[int]:
    def ok(r: dict[str, Any]) -> bool:
        if r["missing"]:
            return False
        for k in ("location_id", "parent", "kind", "cas_id"):
            if k in f and r[k] != f[k]:
                return False
        if "extension" in f and r["extension"] != f["extension"].lstrip(".").lower():
            return False
        if "min_size" in f and r["size"] < f["min_size"]:
            return False
        return not ("tag" in f and {"red": 1, "blue": 2}.get(f["tag"], f["tag"]) not in r["tags"])
    hits = [r for r in rows if ok(r)]
    hits.sort(key=(lambda r: r["id"]) if order == "id" else (lambda r: (r["size"], r["id"])))
    return [r["id"] for r in hits]


@pytest.mark.parametrize(("f", "order"), list(itertools.product(FILTERS, ("id", "size"))))
def test_pages_return_every_match_once_in_order(f: dict[str, Any], order: str) -> None:
    conn, rows = library()
    want = expected(rows, f, order)
    got: list[int] = []
    cursor = None
    for _ in range(10_000):
        page = store.list_entries(conn, store.EntryQuery(**f, order=order, cursor=cursor,
                                                         limit=37))
        got += [e.id for e in page.entries]
        assert len(page.entries) <= 37
        for e in page.entries:  # each row is the whole entry, not just its id
            r = rows[e.id - 1]
            assert (e.path, e.kind, e.size, e.location_id) == (r["path"], r["kind"], r["size"],
                                                               r["location_id"])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert got == want
    assert want or f.get("kind") == "other"  # the filters do select something


def plan(conn: sqlite3.Connection, q: store.EntryQuery) -> str:
    sql, args = store.entries_sql(conn, q)
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


# Filters whose matches are sorted per page in size order (one directory's, one content id's).
SORTED_BY_SIZE = ("parent", "cas_id")


@pytest.mark.parametrize(("f", "order", "deep"),
                         list(itertools.product(FILTERS, ("id", "size"), (False, True))))
def test_query_plans_use_an_index_in_page_order(f: dict[str, Any], order: str,
                                                deep: bool) -> None:
    """Every page starts where the cursor is, in an index that is in the page's order;
    only a directory's or a content id's matches are ever sorted."""
    conn, _ = library(n=200)
    conn.execute("ANALYZE")
    cursor = None if not deep else ("id:100" if order == "id" else "size:20:100")
    p = plan(conn, store.EntryQuery(**f, order=order, cursor=cursor))
    driver = [k for k in SORTED_BY_SIZE if k in f]
    if "MERGE (UNION ALL)" in p:
        # No filter with a size index of its own: each location's (location_id, size)
        # range, merged (sorting at most limit + 1 rows from each).
        assert order == "size" and not driver and not {"location_id", "extension"} & set(f)
        assert p.count("entries_by_size (location_id=?" + (" AND size>?" if deep else "")) == 2
        return
    if "TEMP B-TREE" in p:
        # (min_size in id order sorts its matches only when they are few: the test below)
        assert (order == "size" and driver) or (order == "id" and "min_size" in f), p
    if "tag" in f and order == "id":
        assert "SEARCH t USING PRIMARY KEY (tag_id=?" in p, p
        assert ("entry_id>?" in p) == deep, p
        return
    if "tag" in f:
        assert "entry_tags_by_size (tag_id=?" in p and "TEMP B-TREE" not in p, p
        assert ("(size,entry_id)>(?,?)" in p) == deep, p
        return
    if order == "id" and not driver and not {"location_id", "extension"} & set(f) and \
            f.get("kind") in (None, "file"):
        # No index on the filter: the primary key is walked from the cursor.
        assert ("SEARCH e USING INTEGER PRIMARY KEY (rowid>?)" in p) == deep or \
            "min_size" in f, p
        return
    assert "e USING INDEX" in p or "e USING COVERING INDEX" in p, p
    if deep and not driver:
        # The index range begins at the cursor, not at the start of the key.
        assert ("rowid>?" if order == "id" else "size>?") in p, p


def test_min_size_in_id_order_sorts_only_a_few_matches() -> None:
    """A min_size page in id order sorts the matches only when few match; else it walks
    the primary key (where at least MIN_SIZE_SORT_LIMIT rows of the library match)."""
    conn, _ = library(n=200)
    few = plan(conn, store.EntryQuery(min_size=39, order="id"))
    assert "entries_by_size (location_id=? AND size>?)" in few and "TEMP B-TREE" in few
    conn.executemany(
        "INSERT INTO entries (location_id, path, parent, name, extension, kind, size, mtime_ns,"
        " dev, inode) VALUES (1, ?, 'big', ?, '', 'file', 100, 0, 1, 0)",
        [(f"big/{i}", str(i)) for i in range(store.MIN_SIZE_SORT_LIMIT + 1)])
    many = plan(conn, store.EntryQuery(min_size=39, order="id"))
    assert "TEMP B-TREE" not in many and "SCAN e" in many, many


def test_a_size_cursor_starts_the_range_even_with_min_size() -> None:
    """The duplicate finder's query: min_size with a size cursor seeks to the cursor."""
    conn, _ = library(n=200)
    p = plan(conn, store.EntryQuery(location_id=1, kind="file", min_size=1, order="size",
                                    cursor="size:30:5"))
    assert "entries_by_size (location_id=? AND size>?)" in p, p


def test_a_tagged_entry_keeps_its_size_in_entry_tags() -> None:
    """entry_tags.size (migration 7) follows the entry's size, so tag pages in size order
    stay right when a rescan changes a tagged file."""
    conn, rows = library(n=300)
    tagged = [r["id"] for r in rows if 1 in r["tags"] and not r["missing"]]
    conn.execute("UPDATE entries SET size = 1000 + id WHERE id = ?", (tagged[0],))
    conn.execute("UPDATE entries SET size = 0 WHERE id = ?", (tagged[-1],))
    got: list[int] = []
    cursor = None
    while True:
        page = store.list_entries(conn, store.EntryQuery(tag=1, order="size", cursor=cursor,
                                                         limit=7))
        got += [e.id for e in page.entries]
        assert [e.size for e in page.entries] == sorted(e.size for e in page.entries)
        cursor = page.next_cursor
        if cursor is None:
            break
    sizes = dict(conn.execute("SELECT id, size FROM entries"))
    assert got == sorted(tagged, key=lambda i: (sizes[i], i))
    assert got[-1] == tagged[0]
