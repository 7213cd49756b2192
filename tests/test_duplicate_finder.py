"""End to end through the CLI: locations, the indexer, the duplicate-finder extension, tags.

Every test runs a real daemon (``UnprivilegedDaemon``: file permissions bind it
even though the tests run as root) on a tree the test makes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUILT_EXTENSIONS, Daemon, wait_for
from fstree import (
    DUPLICATES,
    REPORT,
    UnprivilegedDaemon,
    assert_same_as_jdupes,
    expected_index,
    index_of,
    make_adversarial_tree,
    make_tree,
    unlock,
    write,
)
from wasm_guests import make_extension, module

from daemon.locations.content import cas_id_of_bytes

FINDER = BUILT_EXTENSIONS / "duplicate-finder"


@pytest.fixture
def d(tmpdir_short: Path, spawn: Callable[..., Daemon]) -> Iterator[Daemon]:
    assert FINDER.is_dir(), "run `make extensions` first (make test does)"
    yield spawn(socket_path=tmpdir_short / "sd.sock", cls=UnprivilegedDaemon).start()
    unlock(tmpdir_short)


def job(d: Daemon, lib: str, job_id: str) -> dict[str, Any]:
    r = d.rpc("query:jobs.info.v1", {"id": job_id, "transitions": True}, lib)
    assert "result" in r, r
    return r["result"]  # type: ignore[no-any-return]


def entries(d: Daemon, *args: str) -> dict[str, tuple[str, int]]:
    return index_of(d.sd_json("entries", "ls", "--limit", "0", *args))


def tagged(d: Daemon, tag: str = "duplicate") -> set[str]:
    return {e["path"] for e in d.sd_json("tag", "ls", tag)}


def run_finder(d: Daemon, state: dict[str, Any], ext: str = "duplicate-finder",
               ) -> Any:
    return d.sd("--json", "job", "run", ext, "find", "--state", json.dumps(state), "--wait",
                timeout=120)


def final(r: Any) -> dict[str, Any]:
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_index_find_duplicates_change_rescan_and_find_again(d: Daemon, tmpdir_short: Path) -> None:
    tree = make_tree(tmpdir_short / "tree")
    lib = d.sd_json("library", "create", "Home")["id"]
    d.sd("ext", "install", str(FINDER), check=True)

    # Add the location and wait for the index.
    r = d.sd("--json", "location", "add", str(tree), "--no-watch", "--wait", timeout=60)
    assert r.returncode == 0, r.stderr
    info = final(r)
    assert info["status"] == "completed", info
    warnings = "\n".join(info["warnings"])
    assert "cannot read directory locked: Permission denied" in warnings
    assert "symlink loop at loop" in warnings and "symlink loop at docs/self" in warnings
    assert entries(d) == expected_index(tree, unreadable={"locked"})
    loc = d.sd_json("location", "list")[0]
    assert loc["path"] == str(tree) and loc["index_status"] == "completed"

    # The duplicate finder asks the host for whole-content hashes (nothing is hashed yet).
    r = run_finder(d, {"location_id": loc["id"]})
    assert r.returncode == 0, r.stdout + r.stderr
    out = final(r)["output"]
    assert tagged(d) == DUPLICATES
    assert out["stats"]["groups"] == 2 and out["stats"]["duplicates"] == 5
    assert out["stats"]["hashed"] == 10  # every file sharing its size, none empty, none twice
    assert out["stats"]["cached"] == 0 and out["stats"]["bytes_read"] == 2 * len(REPORT) + 4 * 300_000 + 2 * 5000 + 2 * 5
    assert out["stats"]["wasted_bytes"] == len(REPORT) + 2 * 300_000
    human = d.sd("tag", "ls", "duplicate", check=True).stdout
    assert all(p in human for p in DUPLICATES)
    summary = d.sd_json("ext", "storage", "duplicate-finder")
    assert [s["key"] for s in summary] == [f"summary:{loc['id']}"]
    assert summary[0]["value"]["duplicates"] == 5 and summary[0]["value"]["tag"] == "duplicate"

    # Change, delete, move (a file and a directory) and add; then rescan.
    ids = {e["path"]: e["id"] for e in d.sd_json("entries", "ls", "--limit", "0")}
    (tree / "notes" / "a.md").write_bytes(b"alphabet soup")
    (tree / "music" / "other.mp3").unlink()
    (tree / "archive").mkdir()
    os.rename(tree / "docs" / "copy of report.txt", tree / "archive" / "report-old.txt")
    os.rename(tree / "photos" / "backup", tree / "old-photos")
    write(tree / "new.txt", b"new")
    r = d.sd("--json", "location", "rescan", str(loc["id"]), "--wait", timeout=60)
    assert r.returncode == 0, r.stderr
    counts = final(r)["output"]
    assert entries(d) == expected_index(tree, unreadable={"locked"})
    assert counts["moved"] == 2 and counts["removed"] == 1 and counts["inserted"] == 2
    after = {e["path"]: e for e in d.sd_json("entries", "ls", "--limit", "0")}
    # Moves keep the entry (id, tags); the directory's files moved with it.
    assert after["archive/report-old.txt"]["id"] == ids["docs/copy of report.txt"]
    assert after["old-photos"]["id"] == ids["photos/backup"]
    assert after["old-photos/img1.jpg"]["id"] == ids["photos/backup/img1.jpg"]
    assert "duplicate" in d.sd_json("entries", "get", str(ids["docs/copy of report.txt"]))["tags"]
    assert after["notes/a.md"]["id"] == ids["notes/a.md"] and after["notes/a.md"]["size"] == 13

    # New copies arrive; the second run reads only them and the moved file (a rename
    # changes its ctime, part of the cache key); everything else comes from the cache.
    shutil.copy(tree / "docs" / "report.txt", tree / "docs" / "third.txt")
    shutil.copy(tree / "photos" / "2023" / "img1.jpg", tree / "img1-copy.jpg")
    d.sd("location", "rescan", str(loc["id"]), "--wait", check=True, timeout=60)
    r = run_finder(d, {"location_id": loc["id"], "page_size": 3, "hash_batch": 2})
    assert r.returncode == 0, r.stdout + r.stderr
    stats = final(r)["output"]["stats"]
    assert stats["hashed"] == 3 and stats["cached"] == 5 and stats["untagged"] == 5, stats
    assert tagged(d) == {"docs/report.txt", "archive/report-old.txt", "docs/third.txt",
                         "photos/2023/img1.jpg", "old-photos/img1.jpg",
                         "old-photos/img1 (2).jpg", "img1-copy.jpg"}
    # A third run reads nothing at all.
    r = run_finder(d, {"location_id": loc["id"]})
    stats = final(r)["output"]["stats"]
    assert stats["hashed"] == 0 and stats["bytes_read"] == 0 and stats["cached"] == 8, stats

    # Without the exact hash grant (a prefix is not one), the finder gets a permission error.
    noread = tmpdir_short / "noread"
    noread.mkdir()
    shutil.copy(FINDER / "duplicate_finder.wasm", noread)
    manifest = json.loads((FINDER / "manifest.json").read_text())
    manifest["id"] = "duplicate-finder-noread"
    methods = manifest["permissions"]["methods"]
    methods.remove("query:entries.content_hash.v1")
    methods.append("query:entries.")
    (noread / "manifest.json").write_text(json.dumps(manifest))
    d.sd("ext", "install", str(noread), check=True)
    write(tree / "fresh" / "x.bin", b"x" * 1000)  # a same-size pair: must be hashed
    write(tree / "fresh" / "y.bin", b"x" * 1000)
    d.sd("location", "rescan", str(loc["id"]), "--wait", check=True, timeout=60)
    r = run_finder(d, {"location_id": loc["id"], "tag": "noread"}, "duplicate-finder-noread")
    assert r.returncode == 4, r.stdout + r.stderr
    failed = final(r)
    assert any("permission" in w and "query:entries.content_hash.v1" in w
               and "explicit grant" in w for w in failed["warnings"]), failed["warnings"]
    assert d.sd_json("tag", "ls", "noread") == []
    assert d.sd_json("ext", "storage", "duplicate-finder-noread") == []

    # The exact grant of reading bytes grants hashing them too (it already gives that power).
    reader = tmpdir_short / "reader"
    reader.mkdir()
    shutil.copy(FINDER / "duplicate_finder.wasm", reader)
    manifest["id"] = "duplicate-finder-reader"
    methods.remove("query:entries.")
    methods.append("query:entries.read.v1")
    (reader / "manifest.json").write_text(json.dumps(manifest))
    d.sd("ext", "install", str(reader), check=True)
    r = run_finder(d, {"location_id": loc["id"], "tag": "by-reader"}, "duplicate-finder-reader")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {"fresh/x.bin", "fresh/y.bin"} <= tagged(d, "by-reader")
    assert d.sd_json("location", "list")[0]["id"] == loc["id"] and lib


def test_extension_storage_is_private(d: Daemon, tmpdir_short: Path) -> None:
    tree = make_tree(tmpdir_short / "tree", locked=False)
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("ext", "install", str(FINDER), check=True)
    d.sd("location", "add", str(tree), "--wait", check=True)
    r = run_finder(d, {"location_id": 1})
    assert r.returncode == 0, r.stderr
    before = d.sd_json("ext", "storage", "duplicate-finder")
    assert before[0]["key"] == "summary:1"

    # Another extension, granted the whole extension_storage domain, tries to read that key,
    # writes the same key, and lists its keys: it only ever sees its own namespace.
    lib_bytes = uuid.UUID(lib).bytes
    calls = [("query:extension_storage.get.v1", '{"key":"summary:1"}'),
             ("action:extension_storage.set.input.v1", '{"key":"summary:1","value":{"mine":true}}'),
             ("query:extension_storage.list.v1", "{}")]
    body, segs, off = [], [_bytes_data(64, lib_bytes)], 128
    for method, payload in calls:
        segs.append(_bytes_data(off, method.encode()))
        segs.append(_bytes_data(off + 64, payload.encode()))
        body.append(f"""
        (local.set $r (call $call (i32.const {off}) (i32.const {len(method)}) (i32.const 64)
                                  (i32.const {off + 64}) (i32.const {len(payload)})))
        (call $log (i32.const 1) (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r)))""")
        off += 256
    wat = module("\n".join(segs) + """
      (func (export "plugin_init") (result i32)
        (local $r i32)""" + "".join(body) + """
        (i32.const 0))
    """, ("call", "log"))
    src = make_extension(tmpdir_short / "src", "peeker", wat, {
        "methods": ["query:extension_storage.", "action:extension_storage."], "libraries": "*"})
    d.sd("ext", "install", str(src), check=True)
    replies = [json.loads(line.split("[peeker] ", 1)[1]) for line in d.log().splitlines()
               if "[peeker] {" in line]
    assert replies[0] == {"ok": {"key": "summary:1", "found": False, "value": None,
                                 "updated_at": None}}
    assert "ok" in replies[1]
    assert [k["key"] for k in replies[2]["ok"]["keys"]] == ["summary:1"]
    assert d.sd_json("ext", "storage", "duplicate-finder") == before
    assert [s["value"] for s in d.sd_json("ext", "storage", "peeker")] == [{"mine": True}]
    # The CLI's own namespace is separate too.
    assert d.sd_json("call", "query:extension_storage.list.v1", "{}", "-l", lib)["keys"] == []
    # And the inspect operation is for clients only, whatever a manifest grants.
    r = d.rpc("query:extension_storage.inspect.v1", {"extension_id": "peeker"}, lib)
    assert "result" in r


def _bytes_data(offset: int, raw: bytes) -> str:
    esc = "".join(f"\\{b:02x}" for b in raw)
    return f'(data (i32.const {offset}) "{esc}")'


def test_kill9_during_indexing_resumes_and_matches_tree(d: Daemon, tmpdir_short: Path) -> None:
    tree = make_tree(tmpdir_short / "tree")
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("location", "add", str(tree), "--no-watch", "--wait", check=True)
    ids = {e["path"]: e["id"] for e in d.sd_json("entries", "ls", "--limit", "0")}
    # Lots of change: new directories of files, a move, a deletion.
    for i in range(30):
        for j in range(8):
            write(tree / "bulk" / f"d{i:02d}" / f"f{j}.txt", f"{i}-{j}".encode())
    os.rename(tree / "music", tree / "audio")
    (tree / "notes" / "b.md").unlink()
    job_id = d.sd_json("job", "dispatch", "locations.index", "--input", json.dumps(
        {"location_id": 1, "batch_size": 10, "throttle_ms": 150}))["job_id"]
    wait_for(lambda: job(d, lib, job_id)["checkpoints"] >= 3)
    d.kill9()
    d.start()
    d.watch_job(job_id, lib)
    info = job(d, lib, job_id)
    assert info["status"] == "completed"
    notes = [t.get("note") or "" for t in info["transitions"]]
    assert any("requeued after the daemon stopped" in n for n in notes), info["transitions"]
    assert entries(d) == expected_index(tree, unreadable={"locked"})
    after = {e["path"]: e["id"] for e in d.sd_json("entries", "ls", "--limit", "0")}
    assert after["audio/song.mp3"] == ids["music/song.mp3"]  # the move survived the kill
    assert info["output"]["moved"] == 1 and info["output"]["removed"] == 1


ADVERSARIAL_DUPLICATES = {"trap/a", "trap/a-copy", "small/x", "small/x-copy", "links/h",
                          "links/h-link", "links/h-copy", "late/m1", "late/m2", "late/m3",
                          "late/v1", "late/v2", "unreadable/u1", "unreadable/u2"}


def test_adversarial_tree_agrees_with_jdupes(d: Daemon, tmpdir_short: Path) -> None:
    tree = make_adversarial_tree(tmpdir_short / "tree")
    a, b = (tree / "trap" / "a").read_bytes(), (tree / "trap" / "b").read_bytes()
    assert a != b and cas_id_of_bytes(a) == cas_id_of_bytes(b)  # the trap is armed
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("ext", "install", str(FINDER), check=True)
    d.sd("location", "add", str(tree), "--no-watch", "--wait", check=True)  # a stale index
    # cas_ids in the index too: a finder grouping by them would tag trap/b.
    d.sd("location", "identify", "1", "--wait", check=True)
    ids = {e["path"]: e for e in d.sd_json("entries", "ls", "--limit", "0")}
    assert ids["trap/a"]["cas_id"] == ids["trap/b"]["cas_id"]

    state = {"location_id": 1, "page_size": 3, "spin": 20_000_000}
    job_id = d.sd_json("job", "run", "duplicate-finder", "find", "--state",
                       json.dumps(state))["job_id"]
    wait_for(lambda: job(d, lib, job_id)["checkpoints"] >= 1)
    # Mid-job: change one of three copies and delete one of a pair (the largest files, so
    # the job reaches them last). The job is paused at a page boundary meanwhile, so that
    # however slow this machine is, the changes land before it reaches those files.
    d.sd("job", "pause", job_id, "--library", lib, check=True)
    wait_for(lambda: job(d, lib, job_id)["status"] == "paused")
    (tree / "late" / "m1").write_bytes(b"changed")
    (tree / "late" / "v1").unlink()
    d.sd("job", "resume", job_id, "--library", lib, check=True)
    d.watch_job(job_id, lib)
    info = job(d, lib, job_id)
    warnings = "\n".join(info["warnings"])
    assert "late/m1: it changed since it was indexed" in warnings, warnings
    assert "late/v1 no longer exists on disk" in warnings, warnings
    assert "unreadable/u3: Permission denied" in warnings, warnings
    stats = info["output"]["stats"]
    assert stats["skipped"] == 3 and stats["groups"] == 5, stats

    found = tagged(d)
    assert found == ADVERSARIAL_DUPLICATES - {"late/m1", "late/v1", "late/v2"}
    assert_same_as_jdupes(tree, found)
    assert not any(p.startswith(("empty/", "unique/")) or p == "trap/b" or "solo" in p
                   for p in found)


def test_kill9_during_the_extension_job(d: Daemon, tmpdir_short: Path) -> None:
    tree = make_adversarial_tree(tmpdir_short / "tree")
    expected = set(ADVERSARIAL_DUPLICATES)
    for i in range(24):  # 24 groups of two, each of its own size, plus unique files
        data = bytes([i]) * (100 + i)
        write(tree / f"g{i:02d}" / "a.bin", data)
        write(tree / f"g{i:02d}" / "b.bin", data)
        write(tree / f"g{i:02d}" / "c.bin", bytes([i + 1]) * (100 + i))  # same size, other bytes
        expected |= {f"g{i:02d}/a.bin", f"g{i:02d}/b.bin"}
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("ext", "install", str(FINDER), check=True)
    d.sd("location", "add", str(tree), "--wait", check=True)
    state = {"location_id": 1, "page_size": 3, "spin": 20_000_000}
    job_id = d.sd_json("job", "run", "duplicate-finder", "find", "--state",
                       json.dumps(state))["job_id"]
    wait_for(lambda: job(d, lib, job_id)["checkpoints"] >= 4)
    d.kill9()
    d.start()
    d.watch_job(job_id, lib)
    info = job(d, lib, job_id)
    notes = [t.get("note") or "" for t in info["transitions"]]
    assert any("requeued after the daemon stopped" in n for n in notes), info["transitions"]
    found = tagged(d)
    assert found == expected
    assert_same_as_jdupes(tree, found)
    stats = info["output"]["stats"]
    assert stats["groups"] == 24 + 6 and stats["duplicates"] == len(found), stats
    summary = d.sd_json("ext", "storage", "duplicate-finder")[0]["value"]
    assert summary["groups"] == 30 and summary["duplicates"] == len(found)
