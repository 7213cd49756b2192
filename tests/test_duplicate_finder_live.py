"""The duplicate finder kept right by the live watcher: after files are created, deleted,
changed and moved, the tagged set is what ``jdupes -r`` lists (real daemon, real inotify,
the real .wasm dispatched by its manifest's triggers)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from conftest import BUILT_EXTENSIONS, Daemon, wait_for
from fstree import assert_same_as_jdupes, jdupes
from test_watch import add, call, index

from daemon import errors

FINDER = BUILT_EXTENSIONS / "duplicate-finder"


def tagged(d: Daemon, lib: str) -> set[str]:
    """The paths tagged ``duplicate`` in ``lib`` (none while the tag does not exist yet)."""
    out: set[str] = set()
    cursor = None
    while True:
        try:
            page = call(d, "query:entries.list.v1",
                        {"tag": "duplicate", "limit": 1000, "cursor": cursor}, lib)
        except errors.NotFound as e:
            if e.data != {"tag": "duplicate"}:
                raise
            return out
        out.update(e["path"] for e in page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def finder_jobs(d: Daemon, lib: str) -> list[dict[str, Any]]:
    jobs = call(d, "query:jobs.list.v1", {"extension_id": "duplicate-finder", "limit": 1000}, lib)
    return [call(d, "query:jobs.info.v1", {"id": j["id"]}, lib) for j in jobs]


def state_of(job: dict[str, Any]) -> dict[str, Any]:
    return json.loads(job["input"]["state_json"])  # type: ignore[no-any-return]


def checked(d: Daemon, lib: str, kind: str, entry_id: int) -> None:
    """Wait until the trigger job of ``kind`` given ``entry_id`` has completed."""
    def done() -> bool:
        jobs = [j for j in finder_jobs(d, lib)
                if state_of(j).get("trigger") == kind and entry_id in state_of(j)["entry_ids"]]
        assert all(j["status"] not in ("failed", "cancelled") for j in jobs), jobs
        return any(j["status"] == "completed" for j in jobs)
    wait_for(done, 60, f"the {kind} job for entry {entry_id}")


def run_finder(d: Daemon, lib: str, loc: int) -> None:
    """A full run of the finder on the location, to its end."""
    r = d.sd("--json", "job", "run", "duplicate-finder", "find", "--library", lib,
             "--state", json.dumps({"location_id": loc}), "--wait", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def finder_on(d: Daemon, tree: Path, files: dict[str, bytes]) -> tuple[str, int]:
    """``files`` written under ``tree``, a library watching it as a location, the finder
    installed and run once on it: (library id, location id)."""
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("ext", "install", str(FINDER), check=True)
    loc = add(d, lib, tree)
    run_finder(d, lib, loc)
    return lib, loc


def test_live_changes_keep_the_tagged_set_equal_to_jdupes(daemon: Daemon,
                                                          tmpdir_short: Path) -> None:
    rnd = random.Random(15)
    tree = tmpdir_short / "tree"
    outside = tmpdir_short / "outside"
    outside.mkdir()
    pair, triple, changed, moving, lone = (rnd.randbytes(n) for n in (5000, 6000, 7000, 8000, 9000))
    files = {"a/a1": pair, "b/a2": pair, "a/b1": triple, "b/b2": triple, "c/b3": triple,
             "a/c1": changed, "c/c2": changed, "a/d1": moving, "d/d2": moving,
             "a/l1": lone, "a/same-size": rnd.randbytes(5000)}
    for i in range(20):
        files[f"u/f{i:02d}"] = rnd.randbytes(5000 + i * 97)
    lib, loc = finder_on(daemon, tree, files)
    assert tagged(daemon, lib) == {"a/a1", "b/a2", "a/b1", "b/b2", "c/b3", "a/c1", "c/c2",
                                   "a/d1", "d/d2"}
    assert_same_as_jdupes(tree, tagged(daemon, lib))
    ids = {p: e["id"] for p, e in index(daemon, lib, loc).items()}

    # One copy of a pair deleted: its partner has no copy any more.
    (tree / "b/a2").unlink()
    checked(daemon, lib, "entries.removed", ids["b/a2"])
    assert "a/a1" not in tagged(daemon, lib)
    assert_same_as_jdupes(tree, tagged(daemon, lib))

    # A group of three losing one stays a group of two.
    (tree / "c/b3").unlink()
    checked(daemon, lib, "entries.removed", ids["c/b3"])
    assert {"a/b1", "b/b2"} <= tagged(daemon, lib)
    assert_same_as_jdupes(tree, tagged(daemon, lib))

    # A copy changed (same size, other bytes): neither it nor its former partner is tagged.
    (tree / "c/c2").write_bytes(rnd.randbytes(7000))
    checked(daemon, lib, "entries.modified", ids["c/c2"])
    assert not {"a/c1", "c/c2"} & tagged(daemon, lib)
    assert_same_as_jdupes(tree, tagged(daemon, lib))

    # A copy moved out of the location: its partner is alone in it.
    shutil.move(tree / "d/d2", outside / "d2")
    checked(daemon, lib, "entries.removed", ids["d/d2"])
    assert "a/d1" not in tagged(daemon, lib)
    assert_same_as_jdupes(tree, tagged(daemon, lib))

    # Renamed inside the location: still a copy, still tagged.
    os.rename(tree / "b/b2", tree / "u/b2-renamed")
    wait_for(lambda: "u/b2-renamed" in tagged(daemon, lib), 30, "the renamed copy")
    assert_same_as_jdupes(tree, tagged(daemon, lib))

    # A file changed into a copy of another (of another size before): both tagged; and a
    # burst at once: the new copy's partner's other copy deleted, a lone file copied.
    (tree / "a/same-size").write_bytes(pair)
    (tree / "u/b2-renamed").unlink()
    shutil.copy(tree / "a/l1", tree / "u/l1-copy")
    checked(daemon, lib, "entries.modified", ids["a/same-size"])
    checked(daemon, lib, "entries.removed", ids["b/b2"])
    wait_for(lambda: "u/l1-copy" in tagged(daemon, lib), 30, "the new copy")
    wait_for(lambda: all(j["status"] == "completed" for j in finder_jobs(daemon, lib)), 60,
             "the trigger jobs to end")
    assert tagged(daemon, lib) == {"a/a1", "a/same-size", "a/l1", "u/l1-copy"} == jdupes(tree)
    assert "a/b1" not in tagged(daemon, lib)

    # The full mode agrees with what the live updates left.
    live = tagged(daemon, lib)
    run_finder(daemon, lib, loc)
    assert tagged(daemon, lib) == live


def test_changes_found_by_the_watchers_rescans_keep_it_equal_to_jdupes(
        daemon: Daemon, tmpdir_short: Path) -> None:
    """Changes made while a location is not watched, or while the daemon is down, are found
    by the rescan of `watch on` or of the start, announced, and acted on as live ones."""
    rnd = random.Random(16)
    tree = tmpdir_short / "tree"
    pair, changed, triple, down, lone = (rnd.randbytes(n) for n in (5000, 6000, 7000, 8000, 9000))
    files = {"a/p1": pair, "b/p2": pair, "a/q1": changed, "b/q2": changed, "a/t1": triple,
             "b/t2": triple, "c/t3": triple, "a/r1": down, "c/r2": down, "a/l1": lone}
    for i in range(10):
        files[f"u/f{i:02d}"] = rnd.randbytes(5000 + i * 97)
    lib, loc = finder_on(daemon, tree, files)
    assert_same_as_jdupes(tree, tagged(daemon, lib))
    assert len(tagged(daemon, lib)) == 9
    ids = {p: e["id"] for p, e in index(daemon, lib, loc).items()}

    daemon.sd("location", "watch", str(loc), "off", "--library", lib, check=True)
    (tree / "b/p2").unlink()
    (tree / "b/q2").write_bytes(rnd.randbytes(6000))
    (tree / "c/t3").unlink()
    shutil.copy(tree / "a/l1", tree / "c/l1-copy")
    on = daemon.sd_json("location", "watch", str(loc), "on", "--library", lib)
    daemon.watch_job(on["job_id"], lib)
    checked(daemon, lib, "entries.removed", ids["b/p2"])
    checked(daemon, lib, "entries.modified", ids["b/q2"])
    wait_for(lambda: "c/l1-copy" in tagged(daemon, lib), 30, "the copy made while unwatched")
    wait_for(lambda: all(j["status"] == "completed" for j in finder_jobs(daemon, lib)), 60,
             "the trigger jobs to end")
    assert tagged(daemon, lib) == {"a/t1", "b/t2", "a/r1", "c/r2", "a/l1", "c/l1-copy"}
    assert_same_as_jdupes(tree, tagged(daemon, lib))

    # While the daemon is down: its start's rescan announces the removal.
    daemon.stop()
    (tree / "c/r2").unlink()
    daemon.start()
    checked(daemon, lib, "entries.removed", ids["c/r2"])
    assert "a/r1" not in tagged(daemon, lib)
    assert_same_as_jdupes(tree, tagged(daemon, lib))
