"""Manifest triggers in the real daemon: new files on disk dispatch an extension's job."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import BUILT_EXTENSIONS, Daemon, wait_for
from test_duplicate_finder_live import state_of, tagged
from test_watch import add, call, index

TEST_EXT = BUILT_EXTENSIONS / "test-extension"


def extension(tmp: Path, ext_id: str, libraries: Any, triggers: list[dict[str, Any]]) -> Path:
    """The test extension's module under another id, with triggers in its manifest."""
    d = tmp / ext_id
    d.mkdir()
    manifest = json.loads((TEST_EXT / "manifest.json").read_text())
    manifest.update(id=ext_id, triggers=triggers)
    manifest["permissions"]["libraries"] = libraries
    (d / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(TEST_EXT / manifest["wasm_file"], d / manifest["wasm_file"])
    return d


def trigger_jobs(d: Daemon, lib: str, ext_id: str) -> list[dict[str, Any]]:
    jobs = call(d, "query:jobs.list.v1", {"extension_id": ext_id, "limit": 1000}, lib)
    return [call(d, "query:jobs.info.v1", {"id": j["id"]}, lib) for j in jobs]


def trigger_info(d: Daemon, ext_id: str) -> dict[str, Any]:
    return d.sd_json("ext", "info", ext_id)["triggers"][0]  # type: ignore[no-any-return]


def test_a_new_file_fires_the_job_and_bursts_coalesce(daemon: Daemon, tmpdir_short: Path) -> None:
    tree = tmpdir_short / "tree"
    tree.mkdir()
    lib = daemon.sd_json("library", "create", "L")["id"]
    src = extension(tmpdir_short, "watcher-ext", "*", [
        {"on": "entries.created", "job": "counter", "debounce_ms": 100,
         "state": {"target": 3, "spin": 3_000_000}}])
    daemon.sd("ext", "install", str(src), check=True)
    r = daemon.sd("ext", "info", "watcher-ext", check=True)
    assert "entries.created" in r.stdout and "counter" in r.stdout
    loc = add(daemon, lib, tree)

    (tree / "one.txt").write_bytes(b"1")
    one = wait_for(lambda: index(daemon, lib, loc).get("one.txt"), 10, "one.txt indexed")["id"]
    first = wait_for(lambda: trigger_jobs(daemon, lib, "watcher-ext"), 10, "a trigger job")
    assert state_of(first[0]) == {"target": 3, "spin": 3_000_000, "trigger": "entries.created",
                                  "entry_ids": [one]}
    daemon.watch_job(first[0]["id"], lib)

    # A burst: fewer jobs than files, one at a time, every id in exactly one job.
    for i in range(60):
        (tree / f"burst{i}.txt").write_bytes(b"b")
    ids = wait_for(lambda: (ix := index(daemon, lib, loc)) and len(ix) == 61 and
                   {e["id"] for p, e in ix.items() if p.startswith("burst")}, 20, "the burst")

    def all_dispatched() -> list[dict[str, Any]] | None:
        jobs = trigger_jobs(daemon, lib, "watcher-ext")[::-1]  # oldest first
        got = [i for j in jobs[1:] for i in state_of(j)["entry_ids"]]
        done = all(j["status"] == "completed" for j in jobs)
        return jobs if done and sorted(got) == sorted(ids) else None
    jobs = wait_for(all_dispatched, 60, "trigger jobs for every new file")[1:]
    assert len(jobs) < 60
    for before, after in zip(jobs, jobs[1:], strict=False):
        assert after["started_at"] >= before["finished_at"]  # one job at a time per trigger
    info = trigger_info(daemon, "watcher-ext")
    assert info["fired"] == len(jobs) + 1 and info["pending"] == 0 and info["refused"] == 0

    # Paused: events are counted, nothing is dispatched; resumed: fires again.
    daemon.sd("ext", "triggers", "watcher-ext", "off", check=True)
    assert trigger_info(daemon, "watcher-ext")["paused"] is True
    (tree / "while-paused.txt").write_bytes(b"p")
    wait_for(lambda: trigger_info(daemon, "watcher-ext")["ignored"] >= 1, 10, "ignored event")
    assert len(trigger_jobs(daemon, lib, "watcher-ext")) == len(jobs) + 1
    daemon.sd("ext", "triggers", "watcher-ext", "on", check=True)
    (tree / "resumed.txt").write_bytes(b"r")
    new = wait_for(lambda: index(daemon, lib, loc).get("resumed.txt"), 10, "indexed")["id"]
    wait_for(lambda: any(state_of(j)["entry_ids"] == [new]
                         for j in trigger_jobs(daemon, lib, "watcher-ext")), 10, "fired again")

    # A file that appeared while the daemon was down: the rescan at start announces it.
    daemon.stop()
    (tree / "while-down.txt").write_bytes(b"d")
    daemon.start()
    down = wait_for(lambda: index(daemon, lib, loc).get("while-down.txt"), 30, "indexed")["id"]
    wait_for(lambda: any(state_of(j)["entry_ids"] == [down]
                         for j in trigger_jobs(daemon, lib, "watcher-ext")), 30,
             "a trigger job for the file created while the daemon was down")


def test_a_trigger_outside_the_granted_libraries_is_refused(daemon: Daemon,
                                                            tmpdir_short: Path) -> None:
    tree = tmpdir_short / "tree"
    tree.mkdir()
    lib = daemon.sd_json("library", "create", "L")["id"]
    other = daemon.sd_json("library", "create", "Other")["id"]
    src = extension(tmpdir_short, "narrow-ext", [other], [
        {"on": "entries.created", "job": "counter", "debounce_ms": 0, "state": {"target": 1}}])
    daemon.sd("ext", "install", str(src), check=True)
    loc = add(daemon, lib, tree)
    (tree / "new.txt").write_bytes(b"n")
    wait_for(lambda: index(daemon, lib, loc).get("new.txt"), 10, "new.txt indexed")
    info = wait_for(lambda: (t := trigger_info(daemon, "narrow-ext"))["refused"] >= 1 and t, 10,
                    "the refusal")
    assert f"no access to library {lib}" in info["last_error"]
    assert info["fired"] == 0 and info["pending"] == 0
    assert trigger_jobs(daemon, lib, "narrow-ext") == []
    assert trigger_jobs(daemon, other, "narrow-ext") == []
    r = daemon.sd("ext", "info", "narrow-ext", check=True)
    assert "refused" in r.stdout and "no access to library" in r.stdout


def test_the_duplicate_finder_tags_a_new_copy_as_it_lands(daemon: Daemon,
                                                          tmpdir_short: Path) -> None:
    tree = tmpdir_short / "tree"
    (tree / "docs").mkdir(parents=True)
    report = b"quarterly report\n" * 1000
    (tree / "docs" / "report.txt").write_bytes(report)
    (tree / "docs" / "other.txt").write_bytes(b"x" * len(report))  # same size, other bytes
    lib = daemon.sd_json("library", "create", "L")["id"]
    daemon.sd("ext", "install", str(BUILT_EXTENSIONS / "duplicate-finder"), check=True)
    info = daemon.sd_json("ext", "info", "duplicate-finder")
    assert [(t["on"], t["job"]) for t in info["triggers"]] == [
        ("entries.created", "find"), ("entries.modified", "find"), ("entries.removed", "find")]
    loc = add(daemon, lib, tree)
    assert tagged(daemon, lib) == set()

    shutil.copy(tree / "docs" / "report.txt", tree / "copy.txt")
    wait_for(lambda: tagged(daemon, lib) == {"docs/report.txt", "copy.txt"}, 30,
             lambda: f"the copy tagged (tagged: {tagged(daemon, lib)})")
    copy_id = index(daemon, lib, loc)["copy.txt"]["id"]
    jobs = trigger_jobs(daemon, lib, "duplicate-finder")
    assert any(state_of(j) == {"trigger": "entries.created", "entry_ids": [copy_id]}
               for j in jobs), [state_of(j) for j in jobs]
    done = wait_for(lambda: (js := trigger_jobs(daemon, lib, "duplicate-finder")) and all(
        j["status"] == "completed" for j in js) and js, 30, "the trigger jobs to end")
    stats = next(j for j in done if state_of(j)["entry_ids"] == [copy_id])["output"]["stats"]
    assert stats["groups"] == 1 and stats["duplicates"] == 2 and stats["files"] == 1

    # The full mode agrees.
    r = daemon.sd("--json", "job", "run", "duplicate-finder", "find", "--library", lib,
                  "--state", json.dumps({"location_id": loc}), "--wait", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tagged(daemon, lib) == {"docs/report.txt", "copy.txt"}

    # A copy changed so that it is no longer one loses the tag.
    (tree / "copy.txt").write_bytes(b"y" * len(report))
    wait_for(lambda: "copy.txt" not in tagged(daemon, lib), 30, "the changed copy untagged")


def test_ids_pending_at_a_kill_9_are_dispatched_after_the_restart(
        tmpdir_short: Path, spawn: Callable[..., Daemon]) -> None:
    tree = tmpdir_short / "tree"
    tree.mkdir()
    d = spawn().start()
    lib = d.sd_json("library", "create", "L")["id"]
    src = extension(tmpdir_short, "slow-ext", "*", [
        {"on": "entries.created", "job": "counter", "debounce_ms": 4000,
         "state": {"target": 1}}])
    d.sd("ext", "install", str(src), check=True)
    loc = add(d, lib, tree)
    (tree / "x.txt").write_bytes(b"x")
    x = wait_for(lambda: index(d, lib, loc).get("x.txt"), 10, "x.txt indexed")["id"]
    wait_for(lambda: trigger_info(d, "slow-ext")["pending"] == 1, 10, "the id pending")
    d.kill9()  # within the debounce period: nothing was dispatched yet
    d.start()
    job = wait_for(lambda: next((j for j in trigger_jobs(d, lib, "slow-ext")
                                 if state_of(j)["entry_ids"] == [x]), None), 30,
                   "the pending id dispatched after the restart")
    assert len(trigger_jobs(d, lib, "slow-ext")) == 1
    d.watch_job(job["id"], lib)
    assert trigger_info(d, "slow-ext")["pending"] == 0
