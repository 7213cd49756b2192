"""A location's first walk with the entries' secondary indexes deferred (dropped while it
inserts, made again before the sweep): same rows as a normal walk, every query works
meanwhile, and pause, cancel and kill -9 all leave a library with every index."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, fill, wait_for, wait_for_async
from fstree import expected_index
from test_locations import by_path, job_when, op, shape

from daemon.core import Core
from daemon.libraries import deferred
from daemon.libraries.manager import Library
from daemon.locations import indexer, store

EXTS = ("txt", "jpg", "md", "")
ROW_COLS = "path, parent, name, extension, kind, size, mtime_ns, dev, inode, cas_id, missing"


def make_tree(root: Path, dirs: int = 24, files: int = 60) -> None:
    """dirs x files sparse files in two levels, an empty directory and a symlink:
    more entries than DEFER_MIN, so a first walk into an empty library defers."""
    for d in range(dirs):
        leaf = root / f"top{d // 6}" / f"dir{d:02d}"
        leaf.mkdir(parents=True)
        for f in range(files):
            ext = EXTS[f % len(EXTS)]
            with open(leaf / (f"f{f:03d}." + ext if ext else f"f{f:03d}"), "wb") as fh:
                fh.truncate((d * 31 + f * 7) % 300)
    (root / "empty").mkdir()
    os.symlink("top0", root / "link")
    assert sum(1 for _ in root.rglob("*")) > indexer.DEFER_MIN


def index_sql(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    """Every index and trigger of the library (what a deferral drops and makes again)."""
    return set(conn.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('index', "
                            "'trigger') AND sql IS NOT NULL"))


def rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {ROW_COLS} FROM entries ORDER BY path").fetchall()


async def add_empty_location(core: Core, lib: Library, tree: Path) -> int:
    """A location whose first walk is still to come: added while its directory is empty."""
    tree.mkdir(parents=True)
    added = await op(core, lib, "action:locations.add.input.v1",
                     {"path": str(tree), "watch": False})
    await (await lib.jobs.get_handle(added["job_id"])).wait()
    return int(added["location"]["id"])


async def slow_first_walk(core: Core, lib: Library, tmp_path: Path) -> tuple[Path, int, str]:
    """A first walk in small throttled batches, running with its indexes deferred."""
    tree = tmp_path / "tree"
    loc = await add_empty_location(core, lib, tree)
    make_tree(tree)
    job_id = await lib.jobs.dispatch_by_name("locations.index", {
        "location_id": loc, "batch_size": 300, "throttle_ms": 150})
    await wait_for_async(lambda: lib.db.run(deferred.missing), 30, "the indexes deferred")
    await job_when(lib, job_id, lambda i: i.checkpoints >= 2)
    return tree, loc, job_id


@pytest.mark.parametrize("sort", ["one thread", "parallel"])
async def test_deferred_first_walk_stores_what_a_normal_walk_does(
        core: Core, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sort: str) -> None:
    if sort == "parallel":  # the sorter settings of a large library, here on a small one
        monkeypatch.setattr(indexer, "PARALLEL_SORT_ROWS", 1)
        monkeypatch.setattr(indexer, "SORT_CACHE_KIB", 64)
    tree = tmp_path / "tree"
    make_tree(tree)
    fresh = await core.libraries.create_library("fresh")
    fast = await core.libraries.create_library("deferred")
    added = await op(core, fast, "action:locations.add.input.v1", {"path": str(tree), "watch": False})
    out = await (await fast.jobs.get_handle(added["job_id"])).wait()
    assert out["deferred_indexes"] == 4 and out["inserted"] == len(expected_index(tree))

    monkeypatch.setattr(indexer, "DEFER_MIN", 10**9)  # the same walk, indexes kept up
    plain = await core.libraries.create_library("plain")
    added = await op(core, plain, "action:locations.add.input.v1", {"path": str(tree), "watch": False})
    out2 = await (await plain.jobs.get_handle(added["job_id"])).wait()
    assert out2["deferred_indexes"] == 0 and out2["inserted"] == out["inserted"]

    got, want = await fast.db.run(rows), await plain.db.run(rows)
    assert got == want and len(got) == out["inserted"]
    listings = "SELECT path, hash FROM dir_listings ORDER BY path"
    assert (await fast.db.run(lambda c: c.execute(listings).fetchall())
            == await plain.db.run(lambda c: c.execute(listings).fetchall()))
    assert shape(await by_path(core, fast)) == expected_index(tree)
    # Every index is back, as a new library has them, and nothing is left recorded.
    assert await fast.db.run(index_sql) == await fresh.db.run(index_sql)
    assert await fast.db.run(deferred.missing) == set()
    again = await op(core, fast, "action:locations.rescan.input.v1", {"id": added["location"]["id"]})
    out3 = await (await fast.jobs.get_handle(again["job_id"])).wait()
    assert (out3["inserted"], out3["updated"], out3["removed"], out3["deferred_indexes"]) == (0, 0, 0, 0)
    # The walk's cache and checkpoint settings are given back (the latter once the WAL
    # checkpointer that ran behind the walk is done).
    def default_settings(c: sqlite3.Connection) -> bool:
        return (c.execute("PRAGMA cache_size").fetchone()[0],
                c.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                c.execute("PRAGMA threads").fetchone()[0]) == (-2000, 1000, 0)
    await wait_for_async(lambda: fast.db.run(default_settings), 30, "the default settings")


def brute(conn: sqlite3.Connection, q: store.EntryQuery) -> list[int]:
    """The ids entries.list must return for ``q``, by a plain scan of the table."""
    tagged = None
    if q.tag is not None:
        tagged = {r[0] for r in conn.execute("SELECT entry_id FROM entry_tags WHERE tag_id = ?",
                                             (store.resolve_tag(conn, q.tag),))}
    out = []
    for i, loc, parent, ext, kind, size in conn.execute(
            "SELECT id, location_id, parent, extension, kind, size FROM entries WHERE missing = 0"):
        if ((q.location_id is None or loc == q.location_id)
                and (q.parent is None or parent == q.parent)
                and (q.extension is None or ext == q.extension)
                and (q.kind is None or kind == q.kind)
                and (q.min_size is None or size >= q.min_size)
                and (tagged is None or i in tagged)):
            out.append((size, i) if q.order == "size" else (i,))
    return [k[-1] for k in sorted(out)]


def pages(conn: sqlite3.Connection, q: store.EntryQuery) -> list[int]:
    ids, cursor = [], None
    while True:
        page = store.list_entries(conn, store.EntryQuery(**{**store_fields(q), "cursor": cursor}))
        ids += [e.id for e in page.entries]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def store_fields(q: store.EntryQuery) -> dict[str, Any]:
    return {f: getattr(q, f) for f in q.__struct_fields__}


async def test_every_query_works_while_indexes_are_deferred(core: Core, tmp_path: Path) -> None:
    lib = await core.libraries.create_library("L")
    tree, loc, job_id = await slow_first_walk(core, lib, tmp_path)
    tag = await op(core, lib, "action:tags.create.input.v1", {"name": "t"})
    some = await op(core, lib, "query:entries.list.v1", {"location_id": loc, "limit": 40})
    assert len(some["entries"]) == 40
    await op(core, lib, "action:tags.apply.input.v1",
             {"tag": "t", "entry_ids": [e["id"] for e in some["entries"][::3]]})
    queries = [dict(location_id=loc), dict(location_id=loc, parent="top0/dir01"),
               dict(extension="txt"), dict(kind="file"), dict(kind="dir"), dict(min_size=200),
               dict(location_id=loc, min_size=1), dict(tag=tag["id"])]

    def check(conn: sqlite3.Connection) -> tuple[set[str], int]:
        # One call on the database thread: the walk cannot commit in between.
        missing = deferred.missing(conn)
        n = 0
        for f in queries:
            for order in ("id", "size"):
                q = store.EntryQuery(**f, order=order, limit=37)  # type: ignore[arg-type]
                got = pages(conn, q)
                assert got == brute(conn, q), (f, order)
                n += len(got)
        return missing, n

    missing, n = await lib.db.run(check)
    assert missing and n > 0  # checked while the indexes were deferred, on rows already in
    # What the duplicate finder asks: a location's files by size from a cursor.
    page = await op(core, lib, "query:entries.list.v1",
                    {"location_id": loc, "min_size": 1, "order": "size", "limit": 10})
    assert page["entries"] and page["next_cursor"]
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert out["deferred_indexes"] == 4
    assert shape(await by_path(core, lib)) == expected_index(tree)
    assert await lib.db.run(deferred.missing) == set()
    assert await lib.db.run(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0]) == "ok"


async def test_pause_and_cancel_mid_walk_make_the_indexes_again(core: Core, tmp_path: Path) -> None:
    fresh = await core.libraries.create_library("fresh")
    lib = await core.libraries.create_library("L")
    tree, loc, job_id = await slow_first_walk(core, lib, tmp_path)
    await lib.jobs.pause(job_id)
    await job_when(lib, job_id, lambda i: i.status == "paused")
    assert await lib.db.run(index_sql) == await fresh.db.run(index_sql)
    assert await lib.db.run(deferred.missing) == set()
    await lib.jobs.resume(job_id)
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert out["deferred_indexes"] == 0  # a resumed walk detects moves, never defers
    assert shape(await by_path(core, lib)) == expected_index(tree)

    lib2 = await core.libraries.create_library("L2")
    _, _, job2 = await slow_first_walk(core, lib2, tmp_path / "2")
    await lib2.jobs.cancel(job2)
    await job_when(lib2, job2, lambda i: i.status == "cancelled")
    assert await lib2.db.run(index_sql) == await fresh.db.run(index_sql)
    assert await lib2.db.run(deferred.missing) == set()


@pytest.mark.parametrize("stop", ["kill -9", "shutdown"])
def test_a_deferred_walk_stopped_gets_its_indexes_at_the_next_start(
        daemon: Daemon, tmpdir_short: Path, stop: str) -> None:
    """kill -9, or a shutdown (which does not wait to build them): the next open of the
    library builds what is recorded, before anything else; the walk resumes."""
    lib = daemon.sd_json("library", "create", "L")["id"]
    fresh = daemon.sd_json("library", "create", "fresh")["id"]
    libdir = daemon.data_dir / "libraries"
    tree = tmpdir_short / "tree"
    tree.mkdir()
    added = daemon.sd_json("location", "add", str(tree), "--no-watch", "--library", lib)
    loc = added["location"]["id"]
    daemon.watch_job(added["job_id"], lib)
    make_tree(tree)
    job = daemon.sd_json("job", "dispatch", "locations.index", "--library", lib, "--input",
                         json.dumps({"location_id": loc, "batch_size": 300, "throttle_ms": 200}))
    db = libdir / lib / "library.db"

    def deferred_now() -> bool:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return bool(deferred.missing(c)) and c.execute(
                "SELECT checkpoints FROM jobs WHERE id = ?", (job["job_id"],)).fetchone()[0] >= 2
    wait_for(deferred_now, 30, "a checkpointed walk with its indexes deferred")
    if stop == "kill -9":
        daemon.kill9()
    else:
        assert daemon.stop() == 0
    with sqlite3.connect(db) as c:
        names = {n for n, _ in index_sql(c)}
        assert "entries_by_size" not in names and "entries_insert_drops_listing" not in names

    daemon.start()  # the library is open once the daemon answers
    with sqlite3.connect(db) as c, sqlite3.connect(libdir / fresh / "library.db") as f:
        assert index_sql(c) == index_sql(f)
        assert deferred.missing(c) == set()
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    final = daemon.watch_job(job["job_id"], lib)
    assert final["status"] == "completed" and final["output"]["deferred_indexes"] == 0
    with sqlite3.connect(db) as c:
        stored = {p: (k, s) for p, k, s in c.execute(
            "SELECT path, kind, size FROM entries WHERE location_id = ? AND missing = 0", (loc,))}
    assert stored == expected_index(tree)
    assert ("making again what a bulk load left deferred: entries_by_extension, "
            "entries_by_extension_size, entries_by_parent, entries_by_size, "
            "entries_insert_drops_listing") in daemon.log()


def test_full_disk_during_a_deferred_walk_pauses_and_ends_with_every_index(
        small_disk: Path, spawn: Callable[..., Daemon], tmpdir_short: Path) -> None:
    d = spawn(small_disk)
    d.start()
    lib = d.sd_json("library", "create", "L")["id"]
    db = small_disk / "libraries" / lib / "library.db"
    tree = tmpdir_short / "tree"
    tree.mkdir()
    added = d.sd_json("location", "add", str(tree), "--no-watch", "--library", lib)
    loc = added["location"]["id"]
    d.watch_job(added["job_id"], lib)
    make_tree(tree, dirs=40)
    job = d.sd_json("job", "dispatch", "locations.index", "--library", lib, "--input",
                    json.dumps({"location_id": loc, "batch_size": 300, "throttle_ms": 400}))["job_id"]
    info = lambda: d.rpc("query:jobs.info.v1", {"id": job}, lib)["result"]  # noqa: E731

    def deferred_now() -> bool:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return bool(deferred.missing(c)) and info()["checkpoints"] >= 2
    wait_for(deferred_now, 30, "a checkpointed walk with its indexes deferred")
    fill(small_disk / "filler")
    wait_for(lambda: info()["status"] == "paused", 30, lambda: f"the job pauses: {info()}")
    assert info()["pause_reason"] == "disk full"
    # Listing works whether or not the indexes could be made again on the full disk.
    page = d.rpc("query:entries.list.v1", {"location_id": loc, "order": "size", "limit": 5}, lib)
    assert len(page["result"]["entries"]) == 5, page

    (small_disk / "filler").unlink()
    final = d.watch_job(job, lib)  # resumes by itself once there is room
    assert final["output"]["deferred_indexes"] == 0
    assert final["status"] == "completed"
    with sqlite3.connect(db) as c, sqlite3.connect(
            small_disk / "libraries" / d.sd_json("library", "create", "fresh")["id"]
            / "library.db") as f:
        assert index_sql(c) == index_sql(f) and deferred.missing(c) == set()
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {p: (k, s) for p, k, s in c.execute(
            "SELECT path, kind, size FROM entries WHERE location_id = ? AND missing = 0", (loc,))}
    assert stored == expected_index(tree)
    assert d.stop() == 0
    assert "Traceback" not in d.log()


async def test_a_rescan_of_another_location_sweeps_while_the_indexes_are_deferred(
        core: Core, tmp_path: Path) -> None:
    """The indexes are the library's: another location's rescan, under way when a first
    walk defers them, sweeps (move detection on: it looks for orphans) without them."""
    lib = await core.libraries.create_library("L")
    other = tmp_path / "other"
    for d in ("a", "b"):
        (other / d).mkdir(parents=True)
        (other / d / "x.txt").write_bytes(b"x")
    added = await op(core, lib, "action:locations.add.input.v1",
                     {"path": str(other), "watch": False})
    await (await lib.jobs.get_handle(added["job_id"])).wait()
    other_loc = int(added["location"]["id"])
    tree = tmp_path / "tree"
    loc = await add_empty_location(core, lib, tree)
    # Directories of 500 files or more: the walk's first batch passes DEFER_MIN, so it
    # defers before its first pause.
    for d, n in (("big", 1100), ("d0", 500), ("d1", 500), ("d2", 500), ("d3", 500)):
        (tree / d).mkdir()
        for f in range(n):
            (tree / d / f"f{f}.txt").touch()
    (other / "a" / "x.txt").unlink()
    (other / "b" / "new.md").write_bytes(b"new")
    # One directory a batch, 1 s apart: its walk began with every index there, and it
    # sweeps well within the first walk's deferral (6 s between its batches).
    rescan = await lib.jobs.dispatch_by_name("locations.index", {
        "location_id": other_loc, "batch_size": 1, "throttle_ms": 1000})
    await job_when(lib, rescan, lambda i: i.checkpoints >= 1)
    first = await lib.jobs.dispatch_by_name("locations.index", {
        "location_id": loc, "batch_size": 1000, "throttle_ms": 6000})
    await wait_for_async(lambda: lib.db.run(deferred.missing), 30, "the indexes deferred")
    assert (await lib.jobs.info(rescan)).status == "running"
    info = await job_when(lib, rescan, lambda i: i.status not in ("queued", "running"))
    assert (info.status, info.error) == ("completed", None)
    assert "entries_by_parent" in await lib.db.run(deferred.missing)  # swept without it
    assert shape(await by_path(core, lib, location_id=other_loc)) == expected_index(other)
    await lib.jobs.cancel(first)
    await job_when(lib, first, lambda i: i.status == "cancelled")
    assert await lib.db.run(deferred.missing) == set()


async def test_finish_scan_looks_for_orphans_without_a_deferred_index(
        core: Core, tmp_path: Path) -> None:
    """The sweep's orphan search, run while entries_by_parent is deferred, still finds them."""
    lib = await core.libraries.create_library("L")
    tree = tmp_path / "tree"
    make_tree(tree)
    added = await op(core, lib, "action:locations.add.input.v1",
                     {"path": str(tree), "watch": False})
    await (await lib.jobs.get_handle(added["job_id"])).wait()
    loc = int(added["location"]["id"])
    # A row whose directory is not stored: what the orphan search is for.
    await lib.db.run(lambda c: c.execute(
        "INSERT INTO entries (location_id, path, parent, name, extension, kind, size, "
        "mtime_ns, dev, inode) VALUES (?, 'gone/x', 'gone', 'x', '', 'file', 1, 1, 1, 1)",
        (loc,)))
    await lib.db.run(lambda c: deferred.defer(c, "entries", indexer.KEEP_LIVE,
                                              indexer.DEFER_TRIGGERS))
    assert "entries_by_parent" in await lib.db.run(deferred.missing)
    assert await lib.db.run(lambda c: indexer.finish_scan(c, loc, True)) == 1
    assert shape(await by_path(core, lib)) == expected_index(tree)


async def test_a_small_first_walk_makes_what_a_stopped_walk_left_deferred(
        core: Core, tmp_path: Path) -> None:
    """Indexes a stopped walk left deferred (a full disk while making them again) are
    made by the next index job of the library, even a first walk too small to defer."""
    lib = await core.libraries.create_library("L")
    fresh = await core.libraries.create_library("fresh")
    await lib.db.run(lambda c: deferred.defer(c, "entries", indexer.KEEP_LIVE,
                                              indexer.DEFER_TRIGGERS))
    assert "entries_by_size" in await lib.db.run(deferred.missing)
    small = tmp_path / "small"
    small.mkdir()
    for i in range(10):
        (small / f"f{i}.txt").write_bytes(b"x" * i)
    added = await op(core, lib, "action:locations.add.input.v1",
                     {"path": str(small), "watch": False})
    out = await (await lib.jobs.get_handle(added["job_id"])).wait()
    assert out["deferred_indexes"] == 0 and out["inserted"] == 10
    assert await lib.db.run(deferred.missing) == set()
    assert await lib.db.run(index_sql) == await fresh.db.run(index_sql)


async def test_a_small_first_walk_leaves_another_walks_deferral_alone(
        core: Core, tmp_path: Path) -> None:
    """While another location's first walk has the indexes deferred, a small first walk
    of the same library does not make them again under it."""
    lib = await core.libraries.create_library("L")
    _, _, big = await slow_first_walk(core, lib, tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_bytes(b"a")
    added = await op(core, lib, "action:locations.add.input.v1",
                     {"path": str(small), "watch": False})
    out = await (await lib.jobs.get_handle(added["job_id"])).wait()
    assert out["inserted"] == 1
    assert (await lib.jobs.info(big)).status == "running"
    assert "entries_by_size" in await lib.db.run(deferred.missing)
    await lib.jobs.cancel(big)
    await job_when(lib, big, lambda i: i.status == "cancelled")
    assert await lib.db.run(deferred.missing) == set()


async def test_a_page_reads_what_is_deferred_only_after_a_change(core: Core, tmp_path: Path) -> None:
    """entries.list reads the deferred_indexes table once, then not again until a defer
    or restore writes it; every page names exactly the indexes that are there."""
    lib = await core.libraries.create_library("L")
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(10):
        (tree / f"f{i}.txt").write_bytes(b"x" * i)
    added = await op(core, lib, "action:locations.add.input.v1", {"path": str(tree), "watch": False})
    await (await lib.jobs.get_handle(added["job_id"])).wait()
    statements: list[str] = []
    await lib.db.run(lambda c: c.set_trace_callback(statements.append))

    async def page() -> tuple[int, bool]:
        """(statements reading the table, whether entries_by_size was named) for one page."""
        statements.clear()
        got = await op(core, lib, "query:entries.list.v1",
                       {"location_id": added["location"]["id"], "order": "size", "limit": 4})
        assert [e["size"] for e in got["entries"]] == [0, 1, 2, 3]
        return (sum(deferred.TABLE in s for s in statements),
                any("INDEXED BY entries_by_size" in s for s in statements))

    try:
        await page()
        assert await page() == (0, True)  # nothing deferred: no statement for it
        await lib.db.run(lambda c: deferred.defer(c, "entries", indexer.KEEP_LIVE,
                                                  indexer.DEFER_TRIGGERS))
        assert await page() == (1, False)
        assert await page() == (0, False)
        assert await lib.db.run(deferred.restore) == 5
        assert await page() == (1, True)
        assert await page() == (0, True)
    finally:
        await lib.db.run(lambda c: c.set_trace_callback(None))
