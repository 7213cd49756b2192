"""Manifest triggers in the real daemon: new files on disk dispatch an extension's job."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BUILT_EXTENSIONS, Daemon, wait_for, wait_for_async
from test_duplicate_finder_live import state_of, tagged
from test_watch import add, call, index

from daemon.app import open_app
from daemon.config import DaemonConfig
from daemon.events import EntriesCreated
from daemon.extensions import triggers

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


def slow_trigger(tmpdir_short: Path, spawn: Callable[..., Daemon]
                 ) -> tuple[Daemon, str, Path, int]:
    """A daemon with a library, a watched location of an empty tree and an extension
    whose trigger waits 4 s: (daemon, library, tree, location)."""
    tree = tmpdir_short / "tree"
    tree.mkdir()
    d = spawn().start()
    lib = d.sd_json("library", "create", "L")["id"]
    src = extension(tmpdir_short, "slow-ext", "*", [
        {"on": "entries.created", "job": "counter", "debounce_ms": 4000,
         "state": {"target": 1}}])
    d.sd("ext", "install", str(src), check=True)
    return d, lib, tree, add(d, lib, tree)


def test_ids_pending_at_a_kill_9_are_dispatched_after_the_restart(
        tmpdir_short: Path, spawn: Callable[..., Daemon]) -> None:
    d, lib, tree, loc = slow_trigger(tmpdir_short, spawn)
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


def test_pending_ids_are_appended_and_survive_a_torn_line_and_the_old_file(
        tmpdir_short: Path, spawn: Callable[..., Daemon]) -> None:
    """Each event adds its own ids to the pending file, the ids already there are not
    written again; a restart dispatches them, past a line torn by a kill mid-write, and
    from the file's former one-list form too."""
    d, lib, tree, loc = slow_trigger(tmpdir_short, spawn)
    pending = d.data_dir / "extensions" / "triggers-pending.json"
    ids: list[int] = []
    snapshots = []

    def create(name: str) -> None:
        (tree / name).write_bytes(b"x")
        ids.append(wait_for(lambda: index(d, lib, loc).get(name), 10, f"{name} indexed")["id"])
        wait_for(lambda: trigger_info(d, "slow-ext")["pending"] == len(ids), 10, "ids pending")
        snapshots.append(pending.read_bytes())

    create("a.txt")
    create("b.txt")
    first, both = snapshots
    assert both.startswith(first)  # appended, not rewritten
    assert [json.loads(line) for line in both.splitlines()] == [
        ["+", "slow-ext", 0, lib, [ids[0]]], ["+", "slow-ext", 0, lib, [ids[1]]]]
    d.kill9()  # within the debounce period: nothing was dispatched yet
    with open(pending, "ab") as f:
        f.write(b'["+","slow-ext",0,"' + lib.encode() + b'",[99')  # a kill mid-write
    d.start()

    def job_for(want: list[int]) -> dict[str, Any] | None:
        return next((j for j in trigger_jobs(d, lib, "slow-ext")
                     if state_of(j)["entry_ids"] == want), None)

    job = wait_for(lambda: job_for(ids), 30, "the pending ids dispatched after the restart")
    d.watch_job(job["id"], lib)
    wait_for(lambda: trigger_info(d, "slow-ext")["pending"] == 0, 10, "nothing pending")
    assert pending.read_bytes() == b""  # nothing pending: the journal is emptied

    d.kill9()
    pending.write_text(json.dumps([["slow-ext", 0, lib, [ids[1]]]]))  # as sd wrote it before
    d.start()
    job = wait_for(lambda: job_for([ids[1]]), 30, "the id of the old file dispatched")
    d.watch_job(job["id"], lib)
    assert len(trigger_jobs(d, lib, "slow-ext")) == 2
    assert "ignoring line 3" in d.log()


async def test_a_stream_of_events_keeps_the_pending_file_small_and_true(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids added while jobs take them (a backlog that never runs out): after every change
    the file holds exactly the ids pending, and is rewritten before it outgrows them
    (here: past about twice their size)."""
    monkeypatch.setattr(triggers, "COMPACT_BYTES", 0)
    monkeypatch.setattr(triggers, "COMPACT_RATIO", 1)
    data = tmp_path / "data"
    (data / "extensions").mkdir(parents=True)
    extension(data / "extensions", "stream-ext", "*", [
        {"on": "entries.created", "job": "counter", "debounce_ms": 10, "max_entries": 25,
         "state": {"target": 1, "spin": 3_000_000}}])
    core = (await open_app(data, DaemonConfig(data_dir=data, socket_path=data / "s.sock"))).core
    try:
        assert core.plugin_manager is not None and core.triggers is not None
        pm, svc = core.plugin_manager, core.triggers
        await pm.load_plugin("stream-ext")
        lib = await core.libraries.create_library("L")
        pending = data / "extensions" / "triggers-pending.json"

        def check() -> int:
            """The file against memory; how many ids are pending."""
            held = {k: set(s.ids) for k, s in svc._slots.items() if s.ids}
            assert {k: set(v) for k, v in svc._load().items() if v} == held
            n = sum(map(len, held.values()))
            size = pending.stat().st_size if pending.exists() else 0
            assert size <= 16 * (n + len(svc._slots)), (size, n)
            return n

        def fired() -> int:
            return svc.describe("stream-ext", pm.info("stream-ext").manifest.triggers)[0].fired

        def publish(ids: list[int]) -> None:
            core.events.publish(EntriesCreated(library_id=lib.id, location_id=1, entry_ids=ids))

        publish(list(range(1, 201)))
        backlog = []
        for n in range(40):  # 25 ids in, a job of 25 out, each time
            publish([*range(201 + n * 25, 226 + n * 25), 201 + n * 25])  # one id twice
            await wait_for_async(lambda: fired() > n, 30, "the next job")  # noqa: B023
            backlog.append(check())
        assert min(backlog) > 0  # the file was never emptied: it was compacted
        want = list(range(1, 1201))

        async def dispatched() -> list[int]:
            jobs = await lib.jobs.list(extension_id="stream-ext", limit=1000)
            return sorted(x for j in jobs for x in json.loads(j.input["state_json"])["entry_ids"])

        async def all_dispatched() -> bool:
            return await dispatched() == want
        await wait_for_async(all_dispatched, 60, "every id dispatched")
        await wait_for_async(lambda: not any(s.ids or s.job_id for s in svc._slots.values()),
                             60, "the last job ended")
        assert check() == 0 and pending.read_bytes() == b""
    finally:
        await core.shutdown()
