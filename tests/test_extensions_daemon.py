"""Extensions in the real daemon: bundled install, `sd job run`, kill -9 mid-count, `sd ext`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import BUILT_EXTENSIONS, Daemon
from test_jobs_daemon import job_info, wait_for
from wasm_guests import make_extension, module


def test_bundled_extension_and_job_run_cli(ext_daemon: Daemon) -> None:
    d = ext_daemon
    states = {e["id"]: e["state"] for e in d.sd_json("ext", "list")}
    bundled = {p.name for p in BUILT_EXTENSIONS.iterdir() if (p / "manifest.json").exists()}
    assert states == {name: "loaded" for name in bundled} and "test-extension" in states
    assert d.sd_json("status")["extensions"] == len(bundled)
    d.sd("library", "create", "Main", check=True)
    r = d.sd("job", "run", "test-extension", "counter", "--state", '{"current":0,"target":10}', "--wait")
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout and '"current":10' in r.stdout
    log = d.log()
    for line in ("✓ Test extension initialized!", "Starting counter (current: 0, target: 10)",
                 "Counted 1/10 (10% complete)", "✓ Completed! Processed 10 items"):
        assert line in log, line
    assert re.search(r"INFO sd\.ext\.test-extension: \[test-extension\] ✓ Test extension initialized!", log)
    r = d.sd("job", "run", "test-extension", "nope")
    assert r.returncode == 1 and "no job 'nope'" in r.stderr
    r = d.sd("job", "run", "test-extension", "trap", "--wait")
    assert r.returncode == 4 and "unreachable" in r.stderr
    assert d.sd("status").returncode == 0  # the daemon keeps serving


def test_kill9_mid_count_resumes(ext_daemon: Daemon) -> None:
    d = ext_daemon
    lib = d.sd_json("library", "create", "L")["id"]
    job = d.sd_json("job", "run", "test-extension", "counter", "--state",
                    json.dumps({"current": 0, "target": 80, "spin": 4_000_000}))["job_id"]
    wait_for(lambda: job_info(d, lib, job)["checkpoints"] >= 5)
    d.kill9()
    d.start()
    info = d.watch_job(job, lib)
    assert info["status"] == "completed"
    assert info["output"]["current"] == info["output"]["target"] == 80
    starts = re.findall(r"Starting counter \(current: (\d+), target: 80\)", d.log())
    assert len(starts) == 2 and starts[0] == "0" and int(starts[1]) >= 5  # did not start over
    counted = [int(x) for x in re.findall(r"Counted (\d+)/80", d.log())]
    resumed_at = int(starts[1])
    # The second run counts on from its checkpoint, each step once. (The first run may
    # have logged a step whose checkpoint the kill cut off: that step is counted again.)
    assert counted[len(counted) - (80 - resumed_at):] == list(range(resumed_at + 1, 81))
    assert counted[:resumed_at] == list(range(1, resumed_at + 1))


def test_extension_stays_loaded_across_restart(ext_daemon: Daemon) -> None:
    d = ext_daemon
    d.stop()
    d.extra_args = []  # no bundled dir this time: loaded.json brings it back
    d.start()
    states = {e["id"]: e["state"] for e in d.sd_json("ext", "list")}
    assert states["test-extension"] == "loaded"
    d.sd("ext", "unload", "test-extension", check=True)
    d.stop()
    d.start()
    states = {e["id"]: e["state"] for e in d.sd_json("ext", "list")}
    assert states["test-extension"] == "installed"


def test_ext_install_and_refusals(daemon: Daemon, tmpdir_short: Path) -> None:
    wat = module('(func (export "plugin_init") (result i32) (i32.const 0))')
    good = make_extension(tmpdir_short / "src", "tiny", wat)
    r = daemon.sd("ext", "install", str(good))
    assert r.returncode == 0, r.stderr
    assert "tiny 0.0.1: loaded" in r.stdout
    bad = make_extension(tmpdir_short / "src", "bad-manifest", wat, extra_field=1)
    r = daemon.sd("ext", "install", str(bad))
    assert r.returncode == 1 and "unknown field" in r.stderr
    escape = make_extension(tmpdir_short / "src", "escape", wat, wasm_file="../tiny/tiny.wasm")
    r = daemon.sd("ext", "install", str(escape))
    assert r.returncode == 1 and "wasm_file" in r.stderr
    wasi = make_extension(tmpdir_short / "src", "wasi", module(
        '(func (export "plugin_init") (result i32) (i32.const 0))',
        ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',)))
    r = daemon.sd("ext", "install", str(wasi))
    assert r.returncode == 1 and "wasi_snapshot_preview1.fd_write" in r.stderr
    ids = {e["id"]: e["state"] for e in daemon.sd_json("ext", "list")}
    assert ids == {"tiny": "loaded"}
    assert daemon.sd("status").returncode == 0
