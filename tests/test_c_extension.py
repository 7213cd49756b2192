"""The C counter (extensions/c-counter, guest-sdk/c/spacedrive.h) in the real daemon.

The same flow as the Rust counter's tests: `sd ext install`, the seed's job and log
lines, pause/resume from the checkpoint, kill -9 mid-count, a failing job and a trap.
Plus a Zig extension built through @cImport of the same header.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUILT_EXTENSIONS, ROOT, Daemon, wait_for
from test_jobs_daemon import job_info

C_COUNTER = BUILT_EXTENSIONS / "c-counter"
ZIG = [sys.executable, "-m", "ziglang"]


def c_log(d: Daemon) -> list[str]:
    """The c-counter's log lines, without the daemon's prefix."""
    return re.findall(r"sd\.ext\.c-counter: \[c-counter\] (.*)", d.log())


@pytest.fixture
def c_daemon(daemon: Daemon) -> Daemon:
    assert (C_COUNTER / "c_counter.wasm").is_file(), "run `make extensions` first (make test does)"
    r = daemon.sd("ext", "install", str(C_COUNTER))
    assert r.returncode == 0, r.stderr
    assert "c-counter 0.1.0: loaded; jobs: counter, fail, trap" in r.stdout
    return daemon


def run_counter(d: Daemon, lib: str, **state: int) -> str:
    job: str = d.sd_json("job", "run", "c-counter", "counter", "--library", lib,
                         "--state", json.dumps(state))["job_id"]
    return job


def test_seed_flow(c_daemon: Daemon) -> None:
    d = c_daemon
    assert "✓ Test extension initialized!" in c_log(d)
    lib = d.sd_json("library", "create", "Main")["id"]
    r = d.sd("job", "run", "c-counter", "counter", "--state", '{"current":0,"target":10}', "--wait")
    assert r.returncode == 0, r.stderr
    assert 'completed: {"current":10,"target":10}' in r.stdout
    lines = c_log(d)
    assert lines[lines.index("Starting counter (current: 0, target: 10)"):] == [
        "Starting counter (current: 0, target: 10)",
        'ping echo: {"from":"test-extension"}',  # the spacedrive_call round trip
        *[f"Counted {i}/10 ({i * 10}% complete)" for i in range(1, 11)],
        "✓ Completed! Processed 10 items",
    ]
    job = d.sd_json("job", "list", "--library", lib)[0]
    info = job_info(d, lib, job["id"])
    assert info["items"] == 10 and info["progress"] == pytest.approx(1.0)
    assert info["checkpoints"] >= 10 and info["message"] == "Counted 10/10 (100% complete)"
    assert info["output"] == {"current": 10, "target": 10}


def test_fail_and_trap_leave_the_daemon_serving(c_daemon: Daemon) -> None:
    d = c_daemon
    lib = d.sd_json("library", "create", "L")["id"]
    r = d.sd("job", "run", "c-counter", "fail", "--wait")
    assert r.returncode == 4 and "failed with code 2" in r.stderr
    assert "deliberate failure" in c_log(d)
    r = d.sd("job", "run", "c-counter", "trap", "--wait")
    assert r.returncode == 4 and "unreachable" in r.stderr
    r = d.sd("job", "run", "c-counter", "counter", "--state", "[1]", "--wait")
    assert r.returncode == 4 and "failed with code 2" in r.stderr  # the state has no target
    r = d.sd("job", "run", "c-counter", "counter", "--state", "{}", "--wait")
    assert r.returncode == 4
    assert 'invalid state: needs {"target": N}' in c_log(d)
    job = run_counter(d, lib, target=3)
    assert d.watch_job(job, lib)["output"] == {"current": 3, "target": 3}


def test_pause_and_resume_continue_from_checkpoint(c_daemon: Daemon) -> None:
    d = c_daemon
    lib = d.sd_json("library", "create", "L")["id"]
    job = run_counter(d, lib, current=0, target=60, spin=20_000_000)
    wait_for(lambda: job_info(d, lib, job)["items"] >= 5)
    d.sd("job", "pause", job, "--library", lib, check=True)
    info = wait_for(lambda: (i := job_info(d, lib, job))["status"] == "paused" and i)
    at = info["checkpoint"]["current"]
    assert 5 <= at < 60 and info["checkpoint"] == {"current": at, "target": 60, "spin": 20_000_000}
    d.sd("job", "resume", job, "--library", lib, check=True)
    info = d.watch_job(job, lib)
    assert info["output"] == {"current": 60, "target": 60, "spin": 20_000_000}
    lines = c_log(d)
    assert f"Starting counter (current: {at}, target: 60)" in lines
    counted = [ln for ln in lines if ln.startswith("Counted ")]
    assert counted == [f"Counted {i}/60 ({i * 100 // 60}% complete)" for i in range(1, 61)]
    assert info["items"] == 60


def test_kill9_mid_count_resumes(c_daemon: Daemon) -> None:
    d = c_daemon
    lib = d.sd_json("library", "create", "L")["id"]
    job = run_counter(d, lib, current=0, target=80, spin=20_000_000)
    wait_for(lambda: job_info(d, lib, job)["checkpoints"] >= 5)
    d.kill9()
    d.start()  # the installed extension is loaded again by itself
    info = d.watch_job(job, lib)
    assert info["status"] == "completed"
    assert info["output"]["current"] == info["output"]["target"] == 80
    starts = [int(x) for x in re.findall(r"Starting counter \(current: (\d+), target: 80\)",
                                         "\n".join(c_log(d)))]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 5  # did not start over
    counted = [int(x) for x in re.findall(r"^Counted (\d+)/80", "\n".join(c_log(d)), re.M)]
    # The second run counts on from its checkpoint, each step once.
    assert counted[len(counted) - (80 - starts[1]):] == list(range(starts[1] + 1, 81))
    assert counted[:starts[1]] == list(range(1, starts[1] + 1))  # the first run, up to its checkpoint


def test_zig_extension_through_cimport(daemon: Daemon, tmpdir_short: Path) -> None:
    """guest-sdk/c/zig/hello.zig @cImports spacedrive.h; built, installed and run."""
    src = ROOT / "guest-sdk" / "c" / "zig"
    ext = tmpdir_short / "zig-hello"
    ext.mkdir()
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(ROOT / "build" / "zig-cache"),
           "ZIG_LOCAL_CACHE_DIR": str(ROOT / "build" / "zig-cache")}
    r = subprocess.run([*ZIG, "build-exe", str(src / "hello.zig"), str(src / "impl.c"),
                        "-I", str(ROOT / "guest-sdk" / "c"), "-target", "wasm32-freestanding",
                        "-fno-entry", "-rdynamic", "-O", "ReleaseSmall",
                        f"-femit-bin={ext / 'zig_hello.wasm'}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    (ext / "manifest.json").write_text(json.dumps({
        "id": "zig-hello", "name": "Zig hello", "version": "0.1.0",
        "description": "Zig through @cImport", "author": "tests", "wasm_file": "zig_hello.wasm",
        "permissions": {"libraries": "*"}}))
    r = daemon.sd("ext", "install", str(ext))
    assert r.returncode == 0 and "zig-hello 0.1.0: loaded; jobs: hello" in r.stdout, r.stderr
    daemon.sd("library", "create", "L", check=True)
    r = daemon.sd("job", "run", "zig-hello", "hello", "--state", '{"n": 41}', "--wait")
    assert r.returncode == 0 and 'completed: {"n":42}' in r.stdout, r.stderr
    assert "[zig-hello] hello from zig, n = 41" in daemon.log()
