"""Locations, the indexer, entries, content ids, tags and extension storage, in process.

The end-to-end runs through the CLI (and the unreadable directory, which needs
an unprivileged daemon) are in test_duplicate_finder.py.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import wait_for_async
from fstree import REPORT, expected_index, make_tree, write

from daemon import errors
from daemon.app import open_app
from daemon.calls import EXTENSION, Caller
from daemon.config import DaemonConfig
from daemon.core import Core
from daemon.extensions.manifest import Manifest, Permissions
from daemon.extensions.policy import ExtensionPolicy
from daemon.libraries.manager import Library
from daemon.locations import content
from rpc.dispatch import Dispatcher


@pytest.fixture
async def lib(core: Core) -> Library:
    return await core.libraries.create_library("L")


def op(core: Core, lib: Library, method: str, payload: Any = None,
       caller: Caller | None = None) -> Any:
    """Run an operation the way a socket client (or ``caller``) does; returns plain JSON data."""
    async def go() -> Any:
        args = (method, lib.id, msgspec.json.encode(payload or {}))
        r = await (Dispatcher(core).execute_json_operation(*args, caller) if caller
                   else Dispatcher(core).execute_json_operation(*args))
        return msgspec.json.decode(msgspec.json.encode(r))
    return go()


async def job_when(lib: Library, job_id: str, pred: Any) -> Any:
    """The job's info once ``pred`` holds for it."""
    async def matching() -> Any:
        info = await lib.jobs.info(job_id)
        return info if pred(info) else None
    return await wait_for_async(matching, 30, f"job {job_id} to reach the expected state")


async def index(core: Core, lib: Library, tree: Path, **kw: Any) -> tuple[int, dict[str, Any]]:
    # Watching off: these tests look at what a rescan finds.
    added = await op(core, lib, "action:locations.add.input.v1",
                     {"path": str(tree), "watch": False, **kw})
    out = await (await lib.jobs.get_handle(added["job_id"])).wait()
    return added["location"]["id"], out


async def rescan(core: Core, lib: Library, loc: int, **kw: Any) -> dict[str, Any]:
    r = await op(core, lib, "action:locations.rescan.input.v1", {"id": loc, **kw})
    return await (await lib.jobs.get_handle(r["job_id"])).wait()  # type: ignore[no-any-return]


async def all_entries(core: Core, lib: Library, **q: Any) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        page = await op(core, lib, "query:entries.list.v1", {**q, "cursor": cursor, "limit": 1000})
        out += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def by_path(core: Core, lib: Library, **q: Any) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in await all_entries(core, lib, **q)}


def shape(entries: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int]]:
    return {p: (e["kind"], e["size"]) for p, e in entries.items()}


# --- the indexer ------------------------------------------------------------------------------------
async def test_index_matches_tree_and_unchanged_rescan_writes_nothing(
        core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    loc, out = await index(core, lib, tree)
    assert shape(await by_path(core, lib)) == expected_index(tree)
    assert out["inserted"] == out["seen"] == len(expected_index(tree))
    info = await lib.jobs.info((await op(core, lib, "query:locations.list.v1"))[0]["index_job_id"])
    assert sorted(w.split(" (")[0] for w in info.warnings) == [
        "symlink loop at docs/self", "symlink loop at loop -> ."]
    e = (await by_path(core, lib))["docs/copy of report.txt"]
    assert (e["name"], e["parent"], e["extension"], e["size"]) == (
        "copy of report.txt", "docs", "txt", len(REPORT))
    assert e["inode"] == os.stat(tree / "docs" / "copy of report.txt").st_ino
    out = await rescan(core, lib, loc)
    assert (out["inserted"], out["updated"], out["moved"], out["removed"]) == (0, 0, 0, 0)
    locs = await op(core, lib, "query:locations.list.v1")
    assert locs[0]["entries"] == len(expected_index(tree)) and locs[0]["indexed_at"]


async def test_rescan_follows_changes_moves_and_deletions(
        core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    write(tree / "deep" / "a" / "b" / "c.txt", b"c")
    write(tree / "replace-me" / "x.txt", b"x")
    write(tree / "becomes-dir", b"file")
    loc, _ = await index(core, lib, tree, identify=True)
    before = await by_path(core, lib)
    await op(core, lib, "action:tags.apply.input.v1",
             {"tag": (await op(core, lib, "action:tags.create.input.v1", {"name": "keep"}))["id"],
              "entry_ids": [before["notes/b.md"]["id"], before["deep/a"]["id"]]})

    os.rename(tree / "notes" / "b.md", tree / "b-renamed.md")  # file move across directories
    os.rename(tree / "deep" / "a", tree / "moved-a")  # a directory and its subtree
    os.link(tree / "notes" / "a.md", tree / "hardlink.md")  # same inode, old path still there
    (tree / "music" / "song.mp3").write_bytes(b"changed")  # content change
    shutil.rmtree(tree / "photos" / "backup")  # a deleted subtree
    shutil.rmtree(tree / "replace-me")
    write(tree / "replace-me", b"now a file")  # dir -> file
    (tree / "becomes-dir").unlink()
    write(tree / "becomes-dir" / "inside.txt", b"inside")  # file -> dir
    out = await rescan(core, lib, loc)

    after = await by_path(core, lib)
    assert shape(after) == expected_index(tree)
    assert after["b-renamed.md"]["id"] == before["notes/b.md"]["id"]
    assert after["b-renamed.md"]["cas_id"] == before["notes/b.md"]["cas_id"] is not None
    assert after["moved-a"]["id"] == before["deep/a"]["id"]
    assert after["moved-a/b/c.txt"]["id"] == before["deep/a/b/c.txt"]["id"]
    assert after["moved-a/b/c.txt"]["parent"] == "moved-a/b"
    assert after["hardlink.md"]["id"] not in {e["id"] for e in before.values()}
    assert after["notes/a.md"]["id"] == before["notes/a.md"]["id"]
    assert after["music/song.mp3"]["id"] == before["music/song.mp3"]["id"]
    assert after["music/song.mp3"]["cas_id"] is None  # content changed: identity is unknown again
    assert after["replace-me"]["kind"] == "file" and after["becomes-dir"]["kind"] == "dir"
    assert out["moved"] == 2
    keep = {e["path"] for e in await all_entries(core, lib, tag="keep")}
    assert keep == {"b-renamed.md", "moved-a"}
    # Rescanning again changes nothing.
    again = await rescan(core, lib, loc)
    assert (again["inserted"], again["updated"], again["moved"], again["removed"]) == (0, 0, 0, 0)


async def test_pause_and_resume_mid_walk(core: Core, lib: Library, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for i in range(20):
        for j in range(5):
            write(tree / f"d{i:02d}" / f"f{j}", b"x" * j)
    added = await op(core, lib, "action:locations.add.input.v1", {"path": str(tmp_path / "tree")})
    await (await lib.jobs.get_handle(added["job_id"])).wait()
    shutil.rmtree(tree)
    for i in range(20):
        for j in range(5):
            write(tree / f"n{i:02d}" / f"f{j}", b"y" * j)
    job_id = await lib.jobs.dispatch_by_name("locations.index", {
        "location_id": added["location"]["id"], "batch_size": 6, "throttle_ms": 30})
    await job_when(lib, job_id, lambda i: i.checkpoints >= 3)
    await lib.jobs.pause(job_id)
    info = await job_when(lib, job_id, lambda i: i.status == "paused")
    assert info.checkpoint["phase"] == "walk" and info.checkpoint["stack"]
    assert len(msgspec.json.encode(info.checkpoint)) < 2000  # directories to go, not files
    await lib.jobs.resume(job_id)
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert shape(await by_path(core, lib)) == expected_index(tree)
    assert out["removed"] == 120 and out["inserted"] == 120


async def test_names_that_are_not_utf8_are_skipped_with_a_warning(
        core: Core, lib: Library, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_bytes(b"1")
    Path(os.fsdecode(os.path.join(os.fsencode(tree), b"bad\xff.txt"))).write_bytes(b"2")
    _, out = await index(core, lib, tree)
    assert set(await by_path(core, lib)) == {"ok.txt"}
    assert out["warnings"] == 1


# --- locations ------------------------------------------------------------------------------------------
async def test_locations_may_not_nest_and_paths_are_checked(
        core: Core, lib: Library, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    await index(core, lib, tmp_path / "a")
    for bad in (tmp_path / "a", tmp_path / "a" / "b", tmp_path):
        with pytest.raises(errors.InvalidState, match="overlaps location 1"):
            await op(core, lib, "action:locations.add.input.v1", {"path": str(bad)})
    with pytest.raises(errors.InvalidParams, match="absolute"):
        await op(core, lib, "action:locations.add.input.v1", {"path": "relative/dir"})
    with pytest.raises(errors.InvalidParams, match="not a directory"):
        await op(core, lib, "action:locations.add.input.v1", {"path": str(tmp_path / "file")})
    os.symlink(tmp_path / "a", tmp_path / "link")
    with pytest.raises(errors.InvalidState):  # the same directory through a symlink
        await op(core, lib, "action:locations.add.input.v1", {"path": str(tmp_path / "link")})


async def test_rescan_while_indexing_and_remove(core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    loc, _ = await index(core, lib, tree)
    entry = (await by_path(core, lib))["docs/report.txt"]["id"]
    await op(core, lib, "action:tags.apply.input.v1",
             {"tag": (await op(core, lib, "action:tags.create.input.v1", {"name": "t"}))["id"],
              "entry_ids": [entry]})
    slow = await lib.jobs.dispatch_by_name("locations.index", {
        "location_id": loc, "batch_size": 1, "throttle_ms": 200})
    r = await op(core, lib, "action:locations.rescan.input.v1", {"id": loc})
    assert r["already_running"] and r["job_id"] == slow  # no second indexer for one location
    await job_when(lib, slow, lambda i: i.checkpoints >= 1)
    removed = await op(core, lib, "action:locations.remove.input.v1", {"id": loc})
    assert removed["entries"] == len(expected_index(tree))
    assert await op(core, lib, "query:locations.list.v1") == []
    assert (await op(core, lib, "query:tags.list.v1"))[0]["entries"] == 0
    with pytest.raises(errors.NotFound):
        await op(core, lib, "query:entries.get.v1", {"id": entry})
    with pytest.raises(errors.NotFound):
        await op(core, lib, "action:locations.rescan.input.v1", {"id": loc})
    with pytest.raises(errors.JobCancelled):
        await (await lib.jobs.get_handle(slow)).wait()


async def test_one_indexer_at_a_time_per_location(tmp_path: Path) -> None:
    data = tmp_path / "data"
    c = (await open_app(data, DaemonConfig(data_dir=data, socket_path=data / "s.sock",
                                                      max_running_jobs=2), load_extensions=False)).core
    try:
        lib = await c.libraries.create_library("L")
        loc, _ = await index(c, lib, make_tree(tmp_path / "tree", locked=False))
        slow = await lib.jobs.dispatch_by_name("locations.index", {
            "location_id": loc, "batch_size": 1, "throttle_ms": 100})
        await job_when(lib, slow, lambda i: i.status == "running")
        second = await lib.jobs.dispatch_by_name("locations.index", {"location_id": loc})
        with pytest.raises(errors.JobFailed, match=f"indexer job {slow} is already running"):
            await (await lib.jobs.get_handle(second)).wait()
        await lib.jobs.cancel(slow)
    finally:
        await c.shutdown()


# --- entries ------------------------------------------------------------------------------------
async def test_entries_filters_and_keyset_pages(core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    loc, _ = await index(core, lib, tree)
    everything = await by_path(core, lib)
    assert set(await by_path(core, lib, location_id=loc, parent="photos")) == {
        "photos/2023", "photos/backup"}
    assert set(await by_path(core, lib, location_id=loc, parent="")) == {
        "docs", "photos", "music", "notes", "empty1.txt", "empty2.txt", "loop"}
    assert set(await by_path(core, lib, extension=".JPG")) == {
        "photos/2023/img1.jpg", "photos/2023/img2.jpg", "photos/backup/img1.jpg",
        "photos/backup/img1 (2).jpg"}
    assert set(await by_path(core, lib, kind="symlink")) == {"loop", "docs/self"}
    assert set(await by_path(core, lib, kind="file", min_size=300_000)) == {
        "photos/2023/img1.jpg", "photos/2023/img2.jpg", "photos/backup/img1.jpg",
        "photos/backup/img1 (2).jpg"}
    for order in ("id", "size"):
        seen, cursor, pages = [], None, 0
        while True:
            page = await op(core, lib, "query:entries.list.v1",
                            {"order": order, "limit": 4, "cursor": cursor, "kind": "file"})
            seen += page["entries"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        files = [e for e in everything.values() if e["kind"] == "file"]
        key = (lambda e: e["id"]) if order == "id" else (lambda e: (e["size"], e["id"]))
        assert seen == sorted(files, key=key) and pages == -(-len(files) // 4)
    with pytest.raises(errors.InvalidParams, match="cursor"):
        await op(core, lib, "query:entries.list.v1", {"order": "size", "cursor": "id:3"})
    with pytest.raises(errors.InvalidParams, match="location_id"):
        await op(core, lib, "query:entries.list.v1", {"parent": "docs"})
    with pytest.raises(errors.InvalidParams, match="limit"):
        await op(core, lib, "query:entries.list.v1", {"limit": 1001})
    with pytest.raises(errors.NotFound, match="no tag"):
        await op(core, lib, "query:entries.list.v1", {"tag": "nope"})
    got = await op(core, lib, "query:entries.get.v1", {"id": everything["docs/report.txt"]["id"]})
    assert got["path"] == "docs/report.txt" and got["tags"] == []


async def test_entries_read_is_bounded_and_stays_inside_the_location(
        core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    outside = write(tmp_path / "outside" / "report.txt", b"SECRET")
    await index(core, lib, tree)
    e = await by_path(core, lib)

    async def read(path: str, **kw: Any) -> dict[str, Any]:
        return await op(core, lib, "query:entries.read.v1",  # type: ignore[no-any-return]
                        {"entry_id": e[path]["id"], **kw})
    r = await read("docs/report.txt", offset=17, length=16)
    assert base64.b64decode(r["data"]) == REPORT[17:33] and not r["eof"]
    r = await read("docs/report.txt", offset=len(REPORT) - 5, length=100)
    assert base64.b64decode(r["data"]) == REPORT[-5:] and r["eof"] and r["length"] == 5
    big = await read("photos/2023/img1.jpg", length=1024 * 1024)
    assert len(base64.b64decode(big["data"])) == 300_000
    with pytest.raises(errors.TooLarge):
        await read("docs/report.txt", length=1024 * 1024 + 1)
    with pytest.raises(errors.InvalidParams):
        await read("docs/report.txt", offset=-1)
    with pytest.raises(errors.InvalidState, match="dir, not a file"):
        await read("docs")
    with pytest.raises(errors.InvalidState, match="symlink, not a file"):
        await read("loop")
    # A directory swapped for a symlink after indexing does not lead outside.
    shutil.rmtree(tree / "docs")
    os.symlink(outside.parent, tree / "docs")
    with pytest.raises(errors.InvalidState, match="symbolic link"):
        await read("docs/report.txt")
    (tree / "notes" / "a.md").unlink()
    with pytest.raises(errors.NotFound, match="no longer exists"):
        await read("notes/a.md")


# --- content identity -------------------------------------------------------------------------
def test_cas_id_scheme() -> None:
    assert content.sample_ranges(0) == []
    assert content.sample_ranges(100 * 1024) == [(0, 100 * 1024)]
    for size in (100 * 1024 + 1, 300_000, 10**9):
        r = content.sample_ranges(size)
        assert len(r) == 6 and r[0] == (0, 8192) and r[-1] == (size - 8192, 8192)
        assert r[1][0] == 8192 and 0 <= size - 8192 - (r[4][0] + r[4][1]) <= 2  # the middle
        assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(r))  # ordered, disjoint
    data = bytes(i % 251 for i in range(300_000))
    assert content.cas_id_of_bytes(data) == "33432e1ca392a6e0"  # pinned: the guest must agree
    changed = bytearray(data)
    changed[50_000] ^= 1  # outside every sample: same id (documented trade-off)
    assert content.cas_id_of_bytes(bytes(changed)) == content.cas_id_of_bytes(data)
    changed[100_000] ^= 1  # inside sample 1
    assert content.cas_id_of_bytes(bytes(changed)) != content.cas_id_of_bytes(data)


async def test_identify_job(core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    loc, out = await index(core, lib, tree, identify=True)
    files = {p: e for p, e in (await by_path(core, lib)).items() if e["kind"] == "file"}
    assert out["identify"]["hashed"] == len(files)
    for path, e in files.items():
        assert e["cas_id"] == content.cas_id_of_bytes((tree / path).read_bytes()), path
    assert len({files[p]["cas_id"] for p in ("docs/report.txt", "docs/copy of report.txt")}) == 1
    (tree / "notes" / "a.md").write_bytes(b"ALPHA")
    await rescan(core, lib, loc)
    job_id = await lib.jobs.dispatch_by_name("locations.identify", {"location_id": loc})
    assert (await (await lib.jobs.get_handle(job_id)).wait())["hashed"] == 1
    e = (await by_path(core, lib))["notes/a.md"]
    assert e["cas_id"] == content.cas_id_of_bytes(b"ALPHA")
    assert len(await all_entries(core, lib, cas_id=e["cas_id"])) == 1


# --- tags ------------------------------------------------------------------------------------------------
async def test_tags(core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    await index(core, lib, tree)
    e = await by_path(core, lib)
    t = await op(core, lib, "action:tags.create.input.v1", {"name": "red", "color": "#f00"})
    assert t["created"] and t["entries"] == 0
    again = await op(core, lib, "action:tags.create.input.v1", {"name": "red"})
    assert again["id"] == t["id"] and not again["created"]
    ids = [e["docs/report.txt"]["id"], e["notes/a.md"]["id"]]
    r = await op(core, lib, "action:tags.apply.input.v1", {"tag": "red", "entry_ids": ids + [999]})
    assert r == {"tag_id": t["id"], "applied": 2, "unknown": [999]}
    r = await op(core, lib, "action:tags.apply.input.v1", {"tag": t["id"], "entry_ids": ids})
    assert r["applied"] == 0
    assert {x["path"] for x in await all_entries(core, lib, tag="red")} == {
        "docs/report.txt", "notes/a.md"}
    assert (await op(core, lib, "query:entries.get.v1", {"id": ids[0]}))["tags"] == ["red"]
    r = await op(core, lib, "action:tags.remove.input.v1", {"tag": "red", "entry_ids": ids[:1]})
    assert r["removed"] == 1
    assert [(x["name"], x["entries"]) for x in await op(core, lib, "query:tags.list.v1")] == [
        ("red", 1)]
    with pytest.raises(errors.TooLarge):
        await op(core, lib, "action:tags.apply.input.v1", {"tag": "red", "entry_ids": list(range(1001))})
    with pytest.raises(errors.InvalidParams):
        await op(core, lib, "action:tags.create.input.v1", {"name": "  "})
    await op(core, lib, "action:tags.delete.input.v1", {"tag": "red"})
    assert await op(core, lib, "query:tags.list.v1") == []
    with pytest.raises(errors.NotFound):
        await op(core, lib, "action:tags.apply.input.v1", {"tag": "red", "entry_ids": ids})


# --- extension storage and permissions --------------------------------------------------------------
def ext_caller(core: Core, ext_id: str, methods: list[str]) -> Caller:
    m = Manifest(id=ext_id, name=ext_id, version="1", description="", author="",
                 wasm_file="x.wasm", permissions=Permissions(methods=methods, libraries="*"))
    return Caller(EXTENSION, extension_id=ext_id,
                  policy=ExtensionPolicy(m, core.config.extension_limits))


async def test_extension_storage_namespaces(core: Core, lib: Library) -> None:
    everything = ["query:extension_storage.", "action:extension_storage."]
    a, b = ext_caller(core, "ext-a", everything), ext_caller(core, "ext-b", everything)
    await op(core, lib, "action:extension_storage.set.input.v1",
             {"key": "k", "value": {"n": [1, 2]}}, a)
    await op(core, lib, "action:extension_storage.set.input.v1", {"key": "k2", "value": 3}, a)
    got = await op(core, lib, "query:extension_storage.get.v1", {"key": "k"}, a)
    assert got["found"] and got["value"] == {"n": [1, 2]}
    assert not (await op(core, lib, "query:extension_storage.get.v1", {"key": "k"}, b))["found"]
    assert (await op(core, lib, "query:extension_storage.list.v1", {}, b))["keys"] == []
    assert not (await op(core, lib, "query:extension_storage.get.v1", {"key": "k"}))["found"]
    page = await op(core, lib, "query:extension_storage.list.v1", {"limit": 1}, a)
    assert [k["key"] for k in page["keys"]] == ["k"] and page["next_cursor"] == "k"
    page = await op(core, lib, "query:extension_storage.list.v1", {"cursor": "k"}, a)
    assert [k["key"] for k in page["keys"]] == ["k2"] and page["next_cursor"] is None
    # The namespace is not a parameter: an extra field is refused, not honoured.
    with pytest.raises(errors.InvalidParams):
        await op(core, lib, "query:extension_storage.get.v1",
                 {"key": "k", "extension_id": "ext-a"}, b)
    with pytest.raises(errors.PermissionDenied):  # clients only, whatever the grant
        await op(core, lib, "query:extension_storage.inspect.v1", {"extension_id": "ext-a"}, b)
    inspected = await op(core, lib, "query:extension_storage.inspect.v1", {"extension_id": "ext-a"})
    assert [(i["key"], i["value"]) for i in inspected] == [("k", {"n": [1, 2]}), ("k2", 3)]
    assert (await op(core, lib, "action:extension_storage.delete.input.v1", {"key": "k"}, a))["deleted"]
    assert not (await op(core, lib, "action:extension_storage.delete.input.v1", {"key": "k"}, b))["deleted"]
    with pytest.raises(errors.TooLarge):
        await op(core, lib, "action:extension_storage.set.input.v1",
                 {"key": "big", "value": "x" * (1024 * 1024)}, a)
    with pytest.raises(errors.InvalidParams):
        await op(core, lib, "action:extension_storage.set.input.v1", {"key": "", "value": 1}, a)


async def test_reading_bytes_and_adding_locations_need_exact_grants(
        core: Core, lib: Library, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", locked=False)
    loc, _ = await index(core, lib, tree)
    entry = (await by_path(core, lib))["docs/report.txt"]["id"]
    prefix = ext_caller(core, "broad", ["query:entries.", "action:locations.", "query:locations."])
    assert (await op(core, lib, "query:entries.list.v1", {}, prefix))["entries"]
    with pytest.raises(errors.PermissionDenied, match="explicit grant"):
        await op(core, lib, "query:entries.read.v1", {"entry_id": entry}, prefix)
    with pytest.raises(errors.PermissionDenied, match="explicit grant"):
        await op(core, lib, "action:locations.add.input.v1", {"path": str(tmp_path)}, prefix)
    await op(core, lib, "action:locations.rescan.input.v1", {"id": loc}, prefix)  # a prefix will do
    exact = ext_caller(core, "exact", ["query:entries.read.v1"])
    r = await op(core, lib, "query:entries.read.v1", {"entry_id": entry, "length": 8}, exact)
    assert base64.b64decode(r["data"]) == REPORT[:8]
    with pytest.raises(errors.PermissionDenied):
        await op(core, lib, "query:entries.list.v1", {}, exact)
    none = ext_caller(core, "none", [])
    with pytest.raises(errors.PermissionDenied):
        await op(core, lib, "action:tags.create.input.v1", {"name": "x"}, none)


def test_random_trees_index_exactly(tmp_path: Path) -> None:
    """Random trees and random edits: after every rescan the index equals the tree."""
    rnd = random.Random(3)
    tree = tmp_path / "tree"
    names = [f"n{i}" for i in range(6)]

    def mutate() -> None:
        for _ in range(25):
            path = tree.joinpath(*rnd.sample(names, rnd.randint(1, 3)))
            action = rnd.random()
            try:  # an edit that the tree's current shape forbids is just skipped
                if path.is_dir():
                    if action < 0.3:
                        shutil.rmtree(path)
                    elif action < 0.7:
                        os.rename(path, tree / rnd.choice(names) / f"m{rnd.randint(0, 99)}")
                    else:
                        (path / "f").write_bytes(rnd.randbytes(rnd.randint(0, 50)))
                elif path.exists():
                    if action < 0.4:
                        path.unlink()
                    elif action < 0.6:
                        os.rename(path, tree / rnd.choice(names) / f"r{rnd.randint(0, 99)}")
                    else:
                        path.write_bytes(rnd.randbytes(rnd.randint(0, 50)))
                elif action < 0.5:
                    write(path, rnd.randbytes(rnd.randint(0, 50)))
                else:
                    path.mkdir(parents=True)
            except OSError:
                pass

    async def go() -> None:
        c = (await open_app(tmp_path / "data", DaemonConfig(
            data_dir=tmp_path / "data", socket_path=tmp_path / "s.sock"), load_extensions=False)).core
        try:
            lib = await c.libraries.create_library("L")
            tree.mkdir()
            mutate()
            loc, _ = await index(c, lib, tree)
            assert shape(await by_path(c, lib)) == expected_index(tree)
            for _ in range(8):
                mutate()
                await rescan(c, lib, loc)
                assert shape(await by_path(c, lib)) == expected_index(tree)
        finally:
            await c.shutdown()
    asyncio.run(go())


async def test_rescan_repairs_rows_changed_behind_its_back(
        core: Core, lib: Library, tmp_path: Path) -> None:
    """A rescan skips a directory listed exactly as last applied (its listing hash), so any
    other write to a child row must drop that hash: here rows deleted, edited and added
    directly in the database are all put right by the next rescan (issue 15)."""
    tree = make_tree(tmp_path / "tree", locked=False)
    write(tree / "deep" / "a" / "b" / "c.txt", b"c")
    loc, _ = await index(core, lib, tree)
    dirs = {p for p, (kind, _) in expected_index(tree).items() if kind == "dir"} | {""}

    def listings(c: Any) -> set[str]:
        return {p for (p,) in c.execute("SELECT path FROM dir_listings WHERE location_id = ?",
                                        (loc,))}
    assert await lib.db.run(listings) == dirs  # readable directories all have a hash

    def tamper(c: Any) -> None:
        c.execute("DELETE FROM entries WHERE location_id = ? AND path = 'notes/a.md'", (loc,))
        c.execute("UPDATE entries SET size = size + 1 WHERE location_id = ? "
                  "AND path = 'deep/a/b/c.txt'", (loc,))
        c.execute("INSERT INTO entries (location_id, path, parent, name, extension, kind, size, "
                  "mtime_ns, dev, inode) VALUES (?, 'docs/ghost.txt', 'docs', 'ghost.txt', "
                  "'txt', 'file', 1, 0, 0, 0)", (loc,))
        c.execute("UPDATE entries SET cas_id = 'abc' WHERE location_id = ? AND path = 'music'",
                  (loc,))
    await lib.db.run(tamper)
    # Each tampered row dropped its own directory's hash, and no other (cas_id is not listed).
    assert dirs - await lib.db.run(listings) == {"notes", "deep/a/b", "docs"}
    out = await rescan(core, lib, loc)
    assert shape(await by_path(core, lib)) == expected_index(tree)
    assert (out["inserted"], out["updated"], out["removed"]) == (1, 1, 1)
    # Deleting the ghost after the walk dropped the hash of its directory once more.
    assert dirs - await lib.db.run(listings) == {"docs"}
    again = await rescan(core, lib, loc)
    assert (again["inserted"], again["updated"], again["moved"], again["removed"]) == (0, 0, 0, 0)
    assert await lib.db.run(listings) == dirs


async def test_identify_many_files_in_threads_and_skips_what_changed(
        core: Core, lib: Library, tmp_path: Path) -> None:
    """Identify hashes files in threads, through each directory's fd (issue 15): every
    cas_id is right across batches and directories; a file changed, replaced by a symlink
    or behind a directory replaced by a symlink since indexing is skipped, never followed."""
    tree = tmp_path / "tree"
    rnd = random.Random(5)
    contents: dict[str, bytes] = {}
    for d in range(12):
        for i in range(110):
            rel = f"d{d:02d}/f{i:03d}.bin"
            contents[rel] = rnd.randbytes(rnd.choice((0, 1, 100, 5000, 120_000)))
            write(tree / rel, contents[rel])
    outside = tmp_path / "outside"
    write(outside / "f000.bin", b"secret")
    loc, _ = await index(core, lib, tree)
    (tree / "d00" / "f001.bin").write_bytes(b"changed since indexing")
    (tree / "d00" / "f002.bin").unlink()
    os.symlink(outside / "f000.bin", tree / "d00" / "f002.bin")
    shutil.rmtree(tree / "d01")
    os.symlink(outside, tree / "d01")
    skipped = {"d00/f001.bin", "d00/f002.bin"} | {p for p in contents if p.startswith("d01/")}
    job_id = await lib.jobs.dispatch_by_name("locations.identify", {"location_id": loc})
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert (out["hashed"], out["skipped"]) == (len(contents) - len(skipped), len(skipped))
    entries = await by_path(core, lib, kind="file")
    for rel, data in contents.items():
        want = None if rel in skipped else content.cas_id_of_bytes(data)
        assert entries[rel]["cas_id"] == want, rel


async def test_identify_paused_and_resumed_hashes_every_file_once(
        core: Core, lib: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's cas_ids are stored while the next batch is hashed, and its checkpoint is
    written once they are: a pause between batches loses no file and counts none twice."""
    monkeypatch.setattr(content, "BATCH", 4)  # many batches, so the pause lands mid-run
    tree = tmp_path / "tree"
    contents = {f"d{i // 50:02d}/f{i:04d}": f"file {i}".encode() * (i % 7) for i in range(600)}
    for rel, data in contents.items():
        write(tree / rel, data)
    loc, _ = await index(core, lib, tree)
    job_id = await lib.jobs.dispatch_by_name("locations.identify", {"location_id": loc})
    await job_when(lib, job_id, lambda i: i.checkpoints >= 3)
    await lib.jobs.pause(job_id)
    info = await job_when(lib, job_id, lambda i: i.status in ("paused", "completed"))
    assert info.status == "paused", "the job finished before it could be paused"
    done_before = info.checkpoint["identify"]["hashed"]
    assert 0 < done_before < len(contents)
    stored = [e for e in (await by_path(core, lib, kind="file")).values() if e["cas_id"]]
    assert len(stored) >= done_before  # a checkpoint never counts what is not stored
    await lib.jobs.resume(job_id)
    out = await (await lib.jobs.get_handle(job_id)).wait()
    assert (out["hashed"], out["skipped"]) == (len(contents), 0)
    entries = await by_path(core, lib, kind="file")
    for rel, data in contents.items():
        assert entries[rel]["cas_id"] == content.cas_id_of_bytes(data), rel


async def test_rescan_sweeps_entries_whose_directory_is_not_stored(
        core: Core, lib: Library, tmp_path: Path) -> None:
    """Rows under a directory with no row of its own (what an interrupted or ignored subtree
    move leaves) are deleted by the next rescan, nested ones too."""
    tree = make_tree(tmp_path / "tree", locked=False)
    loc, _ = await index(core, lib, tree)

    def orphans(c: Any) -> None:
        for path, parent, kind in (("gone/x.txt", "gone", "file"), ("gone/sub", "gone", "dir"),
                                   ("gone/sub/y.txt", "gone/sub", "file")):
            c.execute("INSERT INTO entries (location_id, path, parent, name, extension, kind, "
                      "size, mtime_ns, dev, inode) VALUES (?, ?, ?, ?, '', ?, 1, 0, 0, 0)",
                      (loc, path, parent, path.rsplit("/", 1)[1], kind))
    await lib.db.run(orphans)
    out = await rescan(core, lib, loc)
    assert out["removed"] == 3
    assert shape(await by_path(core, lib)) == expected_index(tree)
