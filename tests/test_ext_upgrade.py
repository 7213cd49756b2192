"""Upgrading an extension with jobs in flight, through the real daemon and the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, BUILT_EXTENSIONS, Daemon, wait_for
from wasm_guests import hostile, make_extension

# The new version's own log lines: the same code with other words (equal lengths).
PATCHES = {b"Counted ": b"Tallied ", b"Completed! Processed": b"Finished!! Processed"}


def counter_version(dest: Path, version: str, patched: bool) -> Path:
    """A copy of the built test-extension with another version (and log lines if patched)."""
    src = BUILT_EXTENSIONS / "test-extension"
    d = dest / f"test-extension-{version}"
    d.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["version"] = version
    (d / "manifest.json").write_text(json.dumps(manifest))
    wasm = (src / manifest["wasm_file"]).read_bytes()
    if patched:
        for old, new in PATCHES.items():
            assert wasm.count(old) == 1 and len(old) == len(new)
            wasm = wasm.replace(old, new)
    (d / manifest["wasm_file"]).write_bytes(wasm)
    return d


def warm_cache(d: Daemon, version_dir: Path) -> None:
    """Compile a version's module into the daemon's cache (it is keyed by the module's
    hash, not the id) by installing a copy under another id, so that the upgrade under
    test does not wait seconds for Cranelift while the job it races runs to its end."""
    warm = version_dir.parent / "warm-up"
    shutil.copytree(version_dir, warm)
    manifest = json.loads((warm / "manifest.json").read_text())
    (warm / "manifest.json").write_text(json.dumps({**manifest, "id": "warm-up"}))
    d.sd("ext", "install", str(warm), check=True)
    d.sd("ext", "unload", "warm-up", check=True)


def info(d: Daemon, job_id: str) -> dict[str, Any]:
    return d.sd_json("job", "info", job_id)  # type: ignore[no-any-return]


def running_notes(d: Daemon, job_id: str) -> list[str]:
    return [t["note"] for t in info(d, job_id)["transitions"] if t["status"] == "running"]


def counter_mid_run(d: Daemon, src: Path, checkpoints: int, target: int = 300) -> tuple[Path, str]:
    """A library, version 0.2.0 built and in the module cache, and a slow counter job on
    0.1.0 with ``checkpoints`` checkpoints written: (the 0.2.0 directory, the job id)."""
    d.sd("library", "create", "L", check=True)
    v2 = counter_version(src, "0.2.0", patched=True)
    warm_cache(d, v2)
    job = d.sd_json("job", "run", "test-extension", "counter", "--state",
                    json.dumps({"target": target, "spin": 3_000_000}))["job_id"]
    wait_for(lambda: info(d, job)["checkpoints"] >= checkpoints, 60,
             f"{checkpoints} checkpoints")
    return v2, job


def test_counter_continues_on_the_new_version(ext_daemon: Daemon, tmpdir_short: Path) -> None:
    d = ext_daemon
    v2, job = counter_mid_run(d, tmpdir_short / "src", 5)
    r = d.sd("ext", "upgrade", str(v2), check=True)
    assert "test-extension 0.2.0: loaded" in r.stdout and "previous: 0.1.0" in r.stdout
    final = d.watch_job(job)
    assert final["status"] == "completed" and final["output"] == {"current": 300, "target": 300,
                                                                  "spin": 3_000_000}
    log = d.log()
    counted = [int(n) for n in re.findall(r"Counted (\d+)/300", log)]
    tallied = [int(n) for n in re.findall(r"Tallied (\d+)/300", log)]
    starts = [int(n) for n in re.findall(r"Starting counter \(current: (\d+), target: 300\)", log)]
    paused_at = counted[-1]
    # Paused at N by the upgrade, continued at N on the new version: nothing redone or lost.
    assert starts == [0, paused_at] and 5 <= paused_at < 300
    assert counted == list(range(1, paused_at + 1))
    assert tallied == list(range(paused_at + 1, 301))
    assert "Finished!! Processed 300 items" in log and "Completed! Processed 300" not in log
    # Each run says which version and module it used.
    notes = running_notes(d, job)
    assert len(notes) == 2
    assert notes[0].startswith("test-extension 0.1.0, module sha256 ")
    assert notes[1].startswith("test-extension 0.2.0, module sha256 ")
    assert notes[0].rsplit(" ", 1)[1] != notes[1].rsplit(" ", 1)[1]
    statuses = [(t["status"], t["note"]) for t in info(d, job)["transitions"]]
    assert ("paused", "upgrade") in statuses
    r = d.sd("job", "info", job, "--transitions", check=True)
    rows = [ln.split(None, 3) for ln in r.stdout.splitlines()
            if re.match(r"\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+running", ln)]
    assert [row[3].split(",")[0] for row in rows] == ["test-extension 0.1.0",
                                                      "test-extension 0.2.0"], r.stdout

    # A downgrade needs --force; a rollback does not.
    v1 = counter_version(tmpdir_short / "src", "0.1.0", patched=False)
    r = d.sd("ext", "upgrade", str(v1))
    assert r.returncode == 1 and "older than the installed 0.2.0" in r.stderr and "--force" in r.stderr
    r = d.sd("ext", "rollback", "test-extension", check=True)
    assert "test-extension 0.1.0: loaded" in r.stdout and "previous: 0.2.0" in r.stdout
    ext = d.sd_json("ext", "info", "test-extension")
    assert ext["manifest"]["version"] == "0.1.0" and ext["previous_version"] == "0.2.0"
    r = d.sd("ext", "upgrade", str(v1), "--force", check=True)
    assert "test-extension 0.1.0: loaded" in r.stdout
    r = d.sd("ext", "upgrade", str(tmpdir_short / "src" / "nothing"))
    assert r.returncode == 2  # no such path
    bundled = {p.name for p in BUILT_EXTENSIONS.iterdir() if (p / "manifest.json").exists()}
    assert {e["id"] for e in d.sd_json("ext", "list")} == bundled | {"warm-up"}


def test_a_job_the_new_version_drops_stays_paused(daemon: Daemon, tmpdir_short: Path) -> None:
    d = daemon
    d.sd("library", "create", "L", check=True)
    src = tmpdir_short / "src"
    wat = hostile("job_loop_checking", ITERATIONS=2_000_000_000)
    v1 = make_extension(src / "v1", "looper", wat)
    # 0.0.2 has job "walk" (export "walk") instead of "run".
    renamed = wat.replace('(data (i32.const 8) "run")', '(data (i32.const 8) "walk")', 1)
    renamed = renamed.replace("(call $register (i32.const 8) (i32.const 3) (i32.const 8) "
                              "(i32.const 3)", "(call $register (i32.const 8) (i32.const 4) "
                              "(i32.const 8) (i32.const 4)", 1)
    renamed = renamed.replace('(func (export "run")', '(func (export "walk")', 1)
    assert renamed.count('"walk"') == 2 and '(export "run")' not in renamed
    v2 = make_extension(src / "v2", "looper", renamed, version="0.0.2")
    d.sd("ext", "install", str(v1), check=True)
    job = d.sd_json("job", "run", "looper", "run")["job_id"]
    wait_for(lambda: info(d, job)["status"] == "running", 30, "the job to run")
    r = d.sd("ext", "upgrade", str(v2), check=True)
    assert "jobs: walk" in r.stdout
    j = wait_for(lambda: (i := info(d, job))["pause_reason"] == "job not registered" and i, 30,
                 "the job to pause as not registered")
    assert j["status"] == "paused"
    assert any("looper 0.0.2 no longer registers job 'run'" in w and "sd ext rollback looper" in w
               for w in j["warnings"]), j["warnings"]
    # The rollback brings the job's version back, and the job continues on it.
    d.sd("ext", "rollback", "looper", check=True)
    wait_for(lambda: info(d, job)["status"] == "running", 30, "the job to run on 0.0.1 again")
    assert running_notes(d, job)[-1].startswith("looper 0.0.1, module sha256 ")
    d.sd("job", "cancel", job, check=True)
    wait_for(lambda: info(d, job)["status"] == "cancelled", 30, "the cancel")


@pytest.mark.parametrize("moment", ["sent", "paused", "done"])
def test_kill9_during_upgrade_loses_nothing(tmpdir_short: Path, moment: str,
                                            spawn: Callable[..., Daemon]) -> None:
    """kill -9 as the upgrade is asked for, once it has paused the job (files and load
    in progress), and after it: one version or the other loads, the job completes."""
    d = spawn(extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS)]).start()
    v2, job = counter_mid_run(d, tmpdir_short / "src", 3)
    upgrade = subprocess.Popen([str(BIN / "sd"), "--socket", str(d.socket), "ext", "upgrade",
                                str(v2)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if moment == "paused":
        wait_for(lambda: any(t["note"] == "upgrade" for t in info(d, job)["transitions"]),
                 60, "the upgrade to pause the job")
    elif moment == "done":
        assert upgrade.wait(60) == 0
    d.kill9()
    upgrade.wait(30)
    d.start()
    ext = d.sd_json("ext", "info", "test-extension")
    assert ext["state"] == "loaded" and ext["manifest"]["version"] in ("0.1.0", "0.2.0")
    if moment == "done":
        assert ext["manifest"]["version"] == "0.2.0"
    final = d.watch_job(job)
    assert final["status"] == "completed" and final["output"]["current"] == 300
    data = d.data_dir / "extensions"
    assert not (data / ".staging" / "test-extension").exists()
    assert sorted(p.name for p in (data / "test-extension").iterdir()) == [
        "manifest.json", "test_extension.wasm"]


def _version_dir(root: Path, version: str) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"version": version}))
    (root / "m.wasm").write_bytes(version.encode())
    return root


@pytest.mark.parametrize("crash_after", ["staged", "staged_complete", "current_moved"])
def test_a_swap_cut_short_recovers_one_version(tmp_path: Path, crash_after: str) -> None:
    """Every state a crash can leave ``swap_in`` in: ``recover`` puts one whole version
    in place (the new one once it was staged whole and the old one had moved)."""
    import os

    from daemon.extensions import versions

    plugins = tmp_path / "plugins"
    _version_dir(plugins / "ext", "1")
    staged = _version_dir(plugins / versions.STAGING / "ext", "2")
    if crash_after != "staged":
        (staged / versions.COMPLETE).touch()
    if crash_after == "current_moved":
        (plugins / versions.PREVIOUS).mkdir()
        os.replace(plugins / "ext", versions.previous_dir(plugins, "ext"))
    versions.recover(plugins)
    kept = json.loads((plugins / "ext" / "manifest.json").read_text())["version"]
    assert kept == ("2" if crash_after == "current_moved" else "1")
    assert sorted(p.name for p in (plugins / "ext").iterdir()) == ["m.wasm", "manifest.json"]
    assert list((plugins / versions.STAGING).iterdir()) == []


def test_swap_keeps_the_previous_version(tmp_path: Path) -> None:
    from daemon.extensions import versions

    plugins = tmp_path / "plugins"
    _version_dir(plugins / "ext", "1")
    for v in ("2", "3"):
        versions.swap_in(plugins, "ext", _version_dir(tmp_path / v, v), ["manifest.json", "m.wasm"])
    read = lambda p: json.loads((p / "manifest.json").read_text())["version"]  # noqa: E731
    assert (read(plugins / "ext"), read(versions.previous_dir(plugins, "ext"))) == ("3", "2")
    assert sorted(p.name for p in (plugins / "ext").iterdir()) == ["m.wasm", "manifest.json"]


@pytest.mark.parametrize("a, b, order", [
    ("0.2.0", "0.1.0", 1), ("0.10.0", "0.9.1", 1), ("1.0.0", "1.0.0", 0),
    ("1.0.0-rc1", "1.0.0", -1), ("v2", "1.9", 1), ("1.0", "1.0.1", -1)])
def test_compare_versions(a: str, b: str, order: int) -> None:
    from daemon.extensions.versions import compare_versions

    assert compare_versions(a, b) == order and compare_versions(b, a) == -order


def test_install_over_an_installed_version_upgrades(ext_daemon: Daemon,
                                                     tmpdir_short: Path) -> None:
    """`sd ext install` of a newer version does what `sd ext upgrade` does; an older one is
    refused with a pointer to `upgrade --force`."""
    d = ext_daemon
    v2, job = counter_mid_run(d, tmpdir_short / "src", 3)
    r = d.sd("ext", "install", str(v2), check=True)
    assert "test-extension 0.2.0: loaded" in r.stdout and "previous: 0.1.0" in r.stdout
    final = d.watch_job(job)
    assert final["status"] == "completed" and final["output"]["current"] == 300
    assert [n.split(",")[0] for n in running_notes(d, job)] == [
        "test-extension 0.1.0", "test-extension 0.2.0"]
    v1 = counter_version(tmpdir_short / "src", "0.1.0", patched=False)
    r = d.sd("ext", "install", str(v1))
    assert r.returncode == 1 and "upgrade --force" in r.stderr
    assert d.sd_json("ext", "info", "test-extension")["manifest"]["version"] == "0.2.0"


def test_queued_jobs_run_on_the_new_version(tmpdir_short: Path,
                                            spawn: Callable[..., Daemon]) -> None:
    """A job still waiting for a slot when the upgrade comes runs on the new version."""
    d = spawn(extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS),
                          "--max-running-jobs", "1"]).start()
    v2, running = counter_mid_run(d, tmpdir_short / "src", 3, target=200)
    waiting = d.sd_json("job", "run", "test-extension", "counter", "--state",
                        json.dumps({"target": 7}))["job_id"]
    assert info(d, waiting)["status"] == "queued"
    d.sd("ext", "upgrade", str(v2), check=True)
    for job, target in ((running, 200), (waiting, 7)):
        final = d.watch_job(job)
        assert final["status"] == "completed" and final["output"]["current"] == target
    # It may have started in the moment the extension was being swapped: then it
    # paused ("not loaded") and continued once 0.2.0 was in; it never ran on 0.1.0.
    notes = [n.split(",")[0] for n in running_notes(d, waiting)]
    assert notes[-1] == "test-extension 0.2.0"
    assert set(notes) <= {"test-extension 0.2.0", "test-extension not loaded"}, notes
    assert running_notes(d, running)[-1].startswith("test-extension 0.2.0")
    assert "Tallied 7/7" in d.log() and "Counted 7/7" not in d.log()


def _pinger(src: Path, version: str, init_code: int = 0) -> Path:
    """An extension whose plugin_init pings the host once (a call its stats count) and
    returns ``init_code``; its module holds its version, so each version's bytes differ."""
    from wasm_guests import data, module

    ping = "query:test.ping.v1"
    wat = module(data(16, ping) + data(64, "{}") + data(128, f"pinger {version}")
                 + '(func (export "plugin_init") (result i32) (drop (call $call (i32.const 16) '
                 f'(i32.const {len(ping)}) (i32.const 0) (i32.const 64) (i32.const 2))) '
                 f'(i32.const {init_code}))', ("call",))
    return make_extension(src / version, "pinger", wat, version=version)


def test_a_version_is_compiled_and_initialised_once(daemon: Daemon, tmpdir_short: Path) -> None:
    """Installing, installing over a loaded version, upgrading and rolling back each compile
    the module once and run its plugin_init once: the load that validates the new version
    before the swap is the one that serves, so the stats count one init's calls. A version
    whose plugin_init fails is still refused, the one before it still loaded."""
    d = daemon
    src = tmpdir_short / "src"

    def inits() -> int:
        calls = d.sd_json("ext", "stats", "pinger")[0]["since_start"]["calls"]
        return int(calls.get("query:test.ping.v1", 0))

    def sha(v: Path) -> str:
        return hashlib.sha256((v / "pinger.wasm").read_bytes()).hexdigest()

    def compiles(v: Path) -> int:  # the runtime's debug line for each compile or cache load
        return d.log().count(f"module {sha(v)[:16]} (")

    v1, v2, v3 = (_pinger(src, v) for v in ("0.0.1", "0.0.2", "0.0.3"))
    d.sd("ext", "install", str(v1), check=True)
    assert (inits(), compiles(v1)) == (1, 1)
    d.sd("ext", "install", str(v2), check=True)  # over the loaded 0.0.1
    assert (inits(), compiles(v2)) == (2, 1)
    d.sd("ext", "upgrade", str(v3), check=True)
    assert (inits(), compiles(v3)) == (3, 1)
    d.sd("ext", "rollback", "pinger", check=True)
    assert (inits(), compiles(v2)) == (4, 2)
    ext = d.sd_json("ext", "info", "pinger")
    assert (ext["state"], ext["manifest"]["version"]) == ("loaded", "0.0.2")
    assert ext["module_sha256"] == sha(v2) and ext["previous_version"] == "0.0.3"
    installed = d.data_dir / "extensions" / "pinger" / "pinger.wasm"
    assert installed.read_bytes() == (v2 / "pinger.wasm").read_bytes()

    bad = _pinger(src, "0.0.4", init_code=1)
    r = d.sd("ext", "install", str(bad))
    assert r.returncode != 0 and "plugin_init of pinger returned 1" in r.stderr, r.stderr
    ext = d.sd_json("ext", "info", "pinger")
    assert (ext["state"], ext["manifest"]["version"]) == ("loaded", "0.0.2")
    assert ext["module_sha256"] == sha(v2) and ext["previous_version"] == "0.0.3"
    assert installed.read_bytes() == (v2 / "pinger.wasm").read_bytes()


def test_an_upgrade_whose_swap_fails_cleans_up_the_new_version(
        small_disk: Path, spawn: Callable[..., Daemon], tmpdir_short: Path) -> None:
    """The new version is initialised before the swap; when the swap then fails (a full
    disk), its plugin_cleanup runs too: every init is paired with a cleanup."""
    from conftest import fill
    from wasm_guests import IMPORTS, PRELUDE, data

    ping = "query:test.ping.v1"
    call = (f"(drop (call $call (i32.const 16) (i32.const {len(ping)}) (i32.const 0) "
            "(i32.const 64) (i32.const 2)))")
    prelude = PRELUDE.replace('(func (export "plugin_cleanup") (result i32) (i32.const 0))', "")

    def pinger(version: str, ext_id: str = "pinger") -> Path:
        """Pings the host once in plugin_init and once in plugin_cleanup."""
        wat = ("(module\n" + IMPORTS["call"] + prelude + data(16, ping) + data(64, "{}")
               + data(128, f"pinger {version}")
               + f'(func (export "plugin_init") (result i32) {call} (i32.const 0)) '
               + f'(func (export "plugin_cleanup") (result i32) {call} (i32.const 0)))')
        return make_extension(tmpdir_short / "src" / f"{ext_id}-{version}", ext_id, wat,
                              version=version)

    d = spawn(small_disk).start()
    d.sd("ext", "install", str(pinger("0.0.1")), check=True)
    d.sd("ext", "install", str(pinger("0.0.2", "warm-up")), check=True)  # 0.0.2 compiled
    d.sd("ext", "unload", "warm-up", check=True)

    def pings() -> int:
        calls = d.sd_json("ext", "stats", "pinger")[0]["since_start"]["calls"]
        return int(calls.get(ping, 0))

    assert pings() == 1  # 0.0.1's init
    fill(small_disk / "filler")
    r = d.sd("ext", "upgrade", str(pinger("0.0.2")))
    assert r.returncode != 0, r.stdout
    # 0.0.1's cleanup, 0.0.2's init, then its cleanup after the failed swap.
    assert pings() == 4, r.stderr + d.log()
    (small_disk / "filler").unlink()
    assert d.sd_json("status")["pid"] == d.proc.pid  # still serving
