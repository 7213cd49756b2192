"""Hostile guests against the real daemon.

For each attack: the expected clear error; the daemon still answers
``query:core.status.v1`` within a second; a well-behaved job running at the same
time completes correctly; refused calls change no library data.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUILT_EXTENSIONS, Daemon, short_tmpdir, wait_for
from wasm_guests import data, hostile, make_extension, module, wat_bytes

from daemon.errors import SdError
from rpc.client import SyncClient

TIME_SLICE_MS = 300
MEMORY_MB = 4


class Host:
    """One daemon for the module, a library, and a client."""

    def __init__(self, tmp: Path) -> None:
        cfg = tmp / "config.json"
        cfg.write_text(json.dumps({"extension_limits": {
            "time_slice_ms": TIME_SLICE_MS, "max_memory_mb": 64,
            "max_checkpoint_bytes": 1 << 20}}))
        self.tmp = tmp
        self.daemon = Daemon(tmp / "data", tmp / "run" / "sd.sock", extra_args=[
            "--bundled-extensions", str(BUILT_EXTENSIONS), "--config", str(cfg),
            "--max-running-jobs", "4"]).start()
        self.client = SyncClient(self.daemon.socket)
        self.lib = self.client.call("action:libraries.create.input.v1", {"name": "main"})["id"]
        self.other = self.client.call("action:libraries.create.input.v1", {"name": "other"})["id"]

    def install(self, ext_id: str, wat: str, **perms: Any) -> dict[str, Any]:
        permissions = {"methods": ["query:test."], "libraries": [self.lib],
                       "rate_limits": {"requests_per_minute": 60000, "concurrent_jobs": 4},
                       "max_memory_mb": MEMORY_MB}
        permissions.update(perms)
        src = make_extension(self.tmp / "src", ext_id, wat, permissions)
        return self.client.call("action:extensions.install.input.v1", {"path": str(src)})  # type: ignore[no-any-return]

    def install_fails(self, ext_id: str, wat: str, **perms: Any) -> str:
        with pytest.raises(SdError) as exc:
            self.install(ext_id, wat, **perms)
        return exc.value.message

    def run(self, ext_id: str, job: str = "run", state: Any = None, library: str | None = None) -> str:
        r = self.client.call("action:extensions.run_job.input.v1",
                             {"extension_id": ext_id, "job": job, "state": state or {}},
                             library or self.lib)
        return r["job_id"]  # type: ignore[no-any-return]

    def wait(self, job_id: str, library: str | None = None, timeout: float = 60) -> dict[str, Any]:
        def ended() -> Any:
            info = self.client.call("query:jobs.info.v1", {"id": job_id}, library or self.lib)
            return info if info["status"] in ("completed", "failed", "cancelled") else None
        return wait_for(ended, timeout, f"job {job_id} to end")  # type: ignore[no-any-return]

    def companion(self) -> str:
        """A well-behaved counter job that runs alongside the attack."""
        return self.run("test-extension", "counter", {"current": 0, "target": 25, "spin": 1_000_000})

    def healthy(self, companion: str | None) -> None:
        t = time.monotonic()
        with SyncClient(self.daemon.socket) as c:
            st = c.call("query:core.status.v1")
        assert time.monotonic() - t < 1.0
        assert st["pid"] == self.daemon.proc.pid
        if companion is not None:
            info = self.wait(companion)
            assert info["status"] == "completed", info
            out = info["output"]
            assert (out["current"], out["target"], info["items"]) == (25, 25, 25)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    tmp = short_tmpdir()
    h = Host(tmp)
    yield h
    h.client.close()
    h.daemon.stop()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


def ext_state(h: Host, ext_id: str) -> dict[str, Any]:
    return h.client.call("query:extensions.info.v1", {"id": ext_id})  # type: ignore[no-any-return]


# --- refused at load ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("init_loop", "time limit: guest code ran for more than 300 ms"),
    ("init_trap", "unreachable"),
    ("deep_recursion", "call stack exhausted"),
    ("bad_utf8_log", "log message is not valid UTF-8"),
])
def test_failing_init(host: Host, name: str, expected: str) -> None:
    companion = host.companion()
    t = time.monotonic()
    msg = host.install_fails(name.replace("_", "-"), hostile(name))
    assert expected in msg
    if name == "init_loop":
        assert time.monotonic() - t < 5
    info = ext_state(host, name.replace("_", "-"))
    assert info["state"] == "failed" and expected in info["error"]
    host.healthy(companion)


@pytest.mark.parametrize("name", ["start_loop", "init_loop"])
def test_a_loop_with_no_other_guest_running_hits_the_time_limit(host: Host, name: str) -> None:
    """The epoch ticker ticks only while some thread runs guest code (fastpath.GUEST_CODE):
    a start function and plugin_init count, with nothing else running (no companion)."""
    t = time.monotonic()
    msg = host.install_fails(name.replace("_", "-"), hostile(name))
    assert f"time limit: guest code ran for more than {TIME_SLICE_MS} ms" in msg
    assert time.monotonic() - t < 5
    host.healthy(None)


@pytest.mark.parametrize("name,expected", [
    ("unknown_import", "module imports env.abort, which is not part of ABI v2"),
    ("missing_export", "module does not export 'wasm_alloc'"),
])
def test_refused_modules(host: Host, name: str, expected: str) -> None:
    companion = host.companion()
    msg = host.install_fails(name.replace("_", "-"), hostile(name))
    assert expected in msg
    with pytest.raises(SdError, match="no extension"):
        ext_state(host, name.replace("_", "-"))  # nothing was installed
    host.healthy(companion)


def test_manifest_refusals(host: Host) -> None:
    companion = host.companion()
    wat = module('(func (export "plugin_init") (result i32) (i32.const 0))')
    src = make_extension(host.tmp / "src", "linkout", wat)
    (src / "linkout.wasm").unlink()
    (src / "linkout.wasm").symlink_to(src.parent / "outside.wasm")
    (src.parent / "outside.wasm").write_bytes(b"\0asm\1\0\0\0")
    with pytest.raises(SdError, match="leaves the extension directory"):
        host.client.call("action:extensions.install.input.v1", {"path": str(src)})
    for bad in ({"id": "Bad_Id"}, {"wasm_file": "/etc/passwd"}, {"wasm_file": "../x.wasm"},
                {"unknown": 1}):
        d = make_extension(host.tmp / "src", "m" + str(abs(hash(str(bad))) % 1000), wat, **bad)
        with pytest.raises(SdError):
            host.client.call("action:extensions.install.input.v1", {"path": str(d)})
    host.healthy(companion)


# --- jobs --------------------------------------------------------------------------------------------
def test_job_infinite_loop_hits_time_limit(host: Host) -> None:
    host.install("job-loop", hostile("job_loop"))
    companion = host.companion()
    info = host.wait(host.run("job-loop"))
    assert info["status"] == "failed" and "time limit" in info["error"]
    host.healthy(companion)
    # The plugin stays usable for the next job.
    assert ext_state(host, "job-loop")["state"] == "loaded"
    assert "time limit" in host.wait(host.run("job-loop"))["error"]


def test_job_that_checks_in_may_run_long(host: Host) -> None:
    companion = host.companion()
    host.install("checker", hostile("job_loop_checking", ITERATIONS=3_000_000))
    t = time.monotonic()
    info = host.wait(host.run("checker"))
    assert info["status"] == "completed", info
    assert (time.monotonic() - t) * 1000 > TIME_SLICE_MS  # it really ran past one slice
    host.healthy(companion)


def test_memory_grow_until_refused(host: Host) -> None:
    companion = host.companion()
    host.install("grower", hostile("memory_grow"))
    info = host.wait(host.run("grower"))
    assert info["status"] == "completed", info
    assert info["output"]["pages"] * 65536 <= MEMORY_MB * 1024 * 1024
    assert info["output"]["pages"] >= 2
    host.healthy(companion)


def test_wasm_alloc_of_2gib_is_refused(host: Host) -> None:
    host.install("huge", hostile("alloc_huge"))
    companion = host.companion()
    info = host.wait(host.run("huge"))
    assert info["status"] == "failed" and "returned 0: the guest is out of memory" in info["error"]
    host.healthy(companion)


@pytest.mark.parametrize("pointer,expected", [
    (0, "plugin_init of alloc-0 returned 7"),           # no reply could be placed: call returns 0
    (0x7FFFFF00, "spacedrive_call could not write its reply: the guest's wasm_alloc(22) returned "
                 "2147483392, but [2147483392, 2147483414) is outside its memory of 65536 bytes"),
    (-64, "spacedrive_call could not write its reply: the guest's wasm_alloc(22) returned -64, "
          "but [-64, -42) is outside its memory of 65536 bytes"),
])
def test_bad_wasm_alloc_pointers(host: Host, pointer: int, expected: str) -> None:
    companion = host.companion()
    ext = f"alloc-{pointer & 0xffffffff:x}"
    wat = hostile("alloc_bad_pointer", POINTER=pointer)
    msg = host.install_fails(ext, wat)
    assert expected.replace("alloc-0", ext) in msg
    host.healthy(companion)


def test_overlapping_alloc_pointer_only_hurts_the_guest(host: Host) -> None:
    companion = host.companion()
    # The reply lands on the guest's own method string; the host stays consistent.
    host.install("overlap", hostile("alloc_bad_pointer", POINTER=16))
    assert ext_state(host, "overlap")["state"] == "loaded"
    host.healthy(companion)


def test_call_flood_is_rate_limited(host: Host) -> None:
    host.install("flood", hostile("call_flood", CALLS=20000),
                 rate_limits={"requests_per_minute": 600, "concurrent_jobs": 1})
    companion = host.companion()
    job = host.run("flood")
    for _ in range(5):
        host.healthy(None)
    info = host.wait(job)
    assert info["status"] == "completed", info
    # 10 a second: a one-second burst plus what the bucket refilled while the job ran.
    allowed = 10 + 10 * (info["finished_at"] - info["started_at"]) + 1
    assert 20000 - info["output"]["errors"] <= allowed, (info["output"], allowed)
    host.healthy(companion)


def test_log_flood_is_suppressed(host: Host) -> None:
    companion = host.companion()
    host.install("logger", hostile("log_flood", LINES=20_000))
    log = host.daemon.log()
    lines = log.count("[logger] flood line")
    assert 0 < lines < 5_000
    assert re.search(r"\[logger\] \d+ log lines suppressed", log) or lines <= 200
    host.healthy(companion)


def test_huge_checkpoint_is_refused(host: Host) -> None:
    companion = host.companion()
    host.install("bigstate", hostile("big_checkpoint"), max_memory_mb=4)
    info = host.wait(host.run("bigstate"))
    assert info["status"] == "failed" and "failed with code 12" in info["error"]
    assert any("checkpoint of 104857600 bytes refused" in w for w in info["warnings"])
    assert info["checkpoints"] == 0
    host.healthy(companion)


def test_forged_job_id(host: Host) -> None:
    host.install("forger", hostile("forged_job_id"))
    companion = host.companion()
    info = host.wait(host.run("forger"))
    assert info["status"] == "failed"
    assert "job id 00000000-0000-0000-0000-000000000000 is not a job of extension forger" in info["error"]
    host.healthy(companion)


def test_job_id_passed_as_text(host: Host) -> None:
    host.install("text-id", hostile("job_id_as_text"))
    job = host.run("text-id")
    info = host.wait(job)
    assert info["status"] == "failed"
    assert f"the text '{job[:16]}': job ids are 16 raw bytes, not text" in info["error"], info


def test_forbidden_calls(host: Host) -> None:
    companion = host.companion()
    before_other = host.client.call("query:jobs.list.v1", {}, host.other)
    before_libs = host.client.call("query:libraries.list.v1")
    wat = hostile("forbidden_calls", LIB_BYTES=wat_bytes(uuid.UUID(host.other).bytes))
    host.install("forbidden", wat, methods=["action:", "query:"])  # asks for everything
    replies = [json.loads(m) for m in re.findall(r"\[forbidden\] (\{.*\})", host.daemon.log())]
    assert len(replies) == 3
    assert replies[0]["error"]["code"] == -32003 and "core.shutdown" in replies[0]["error"]["message"]
    assert replies[1]["error"]["code"] == -32003 and host.other in replies[1]["error"]["message"]
    assert replies[2]["error"]["code"] == -32602 and "not valid JSON" in replies[2]["error"]["message"]
    host.healthy(companion)  # still running: the shutdown was refused
    assert host.client.call("query:jobs.list.v1", {}, host.other) == before_other
    assert host.client.call("query:libraries.list.v1") == before_libs


# --- bad pointers and lengths to every host function --------------------------------------------
BAD = {"oob": "(i32.const 0x7fff0000)", "negative": "(i32.const -16)"}
CALLS = {
    "spacedrive_call": ("init", "(drop (call $call {P} (i32.const 18) (i32.const 0) (i32.const 40) (i32.const 2)))"),
    "spacedrive_call_payload": ("init", "(drop (call $call (i32.const 16) (i32.const 18) (i32.const 0) {P} (i32.const 8)))"),
    "spacedrive_call_library": ("init", "(drop (call $call (i32.const 16) (i32.const 18) {P} (i32.const 40) (i32.const 2)))"),
    "spacedrive_log": ("init", "(call $log (i32.const 1) {P} (i32.const 8))"),
    "register_job": ("init", "(drop (call $register {P} (i32.const 3) (i32.const 8) (i32.const 3) (i32.const 0)))"),
    "job_report_progress": ("job", "(call $progress {P} (f32.const 0.5) (i32.const 16) (i32.const 2))"),
    "job_report_progress_msg": ("job", "(call $progress (local.get $id) (f32.const 0.5) {P} (i32.const 2))"),
    "job_checkpoint": ("job", "(drop (call $checkpoint (local.get $id) {P} (i32.const 2)))"),
    "job_check_interrupt": ("job", "(drop (call $interrupt {P}))"),
    "job_add_warning": ("job", "(call $warning (local.get $id) {P} (i32.const 4))"),
    "job_increment_items": ("job", "(call $items {P} (i64.const 1))"),
    "job_increment_bytes": ("job", "(call $bytes {P} (i64.const 1))"),
}
ALL_IMPORTS = """
  (import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "job_report_progress" (func $progress (param i32 f32 i32 i32)))
  (import "spacedrive" "job_checkpoint" (func $checkpoint (param i32 i32 i32) (result i32)))
  (import "spacedrive" "job_check_interrupt" (func $interrupt (param i32) (result i32)))
  (import "spacedrive" "job_add_warning" (func $warning (param i32 i32 i32)))
  (import "spacedrive" "job_increment_items" (func $items (param i32 i64)))
  (import "spacedrive" "job_increment_bytes" (func $bytes (param i32 i64)))
"""


def bad_pointer_guest(phase: str, stmt: str) -> str:
    from wasm_guests import _parts
    parts = _parts()
    init = stmt if phase == "init" else ""
    job = stmt if phase == "job" else ""
    return f"""(module {ALL_IMPORTS} {parts['prelude']} {parts['jobid']}
      (data (i32.const 8) "run")
      (data (i32.const 16) "query:test.ping.v1")
      (data (i32.const 40) "{{}}")
      (func (export "plugin_init") (result i32)
        {init}
        (call $register (i32.const 8) (i32.const 3) (i32.const 8) (i32.const 3) (i32.const 0)))
      (func (export "run") (param $ctx i32) (param i32 i32 i32) (result i32)
        (local $id i32)
        (local.set $id (call $jobid (local.get $ctx)))
        {job}
        (i32.const 0)))"""


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("fn", sorted(CALLS))
def test_bad_pointer_to_every_host_function(host: Host, fn: str, kind: str) -> None:
    companion = host.companion()
    phase, stmt = CALLS[fn]
    ext = f"bad-{fn.replace('_', '-')}-{kind}"
    wat = bad_pointer_guest(phase, stmt.replace("{P}", BAD[kind]))
    if phase == "init":
        assert "out of bounds" in host.install_fails(ext, wat)
    else:
        host.install(ext, wat)
        info = host.wait(host.run(ext))
        assert info["status"] == "failed" and "out of bounds" in info["error"], info
    host.healthy(companion)


def test_negative_and_huge_lengths(host: Host) -> None:
    companion = host.companion()
    for length, expected in (("-1", "exceeds the limit"), ("0x7fffffff", "exceeds the limit")):
        wat = bad_pointer_guest("init", f"(call $log (i32.const 1) (i32.const 16) (i32.const {length}))")
        assert expected in host.install_fails(f"len-{abs(hash(length)) % 997}", wat)
    wat = bad_pointer_guest("init", "(drop (call $call (i32.const 16) (i32.const 18) (i32.const 0) (i32.const 40) (i32.const -1)))")
    assert "negative payload length" in host.install_fails("neg-payload", wat)
    host.healthy(companion)



def test_extension_sees_only_granted_libraries_and_its_own_jobs(host: Host) -> None:
    companion = host.companion()  # a job of test-extension in host.lib
    wat = module(f"""
      {data(16, "query:libraries.list.v1")}
      {data(48, "query:jobs.list.v1")}
      {data(80, "{}")}
      (data (i32.const 96) "{wat_bytes(uuid.UUID(host.lib).bytes)}")
      (func $show (param $r i32)
        (call $log (i32.const 1) (i32.add (local.get $r) (i32.const 4)) (i32.load (local.get $r))))
      (func (export "plugin_init") (result i32)
        (call $show (call $call (i32.const 16) (i32.const 23) (i32.const 0) (i32.const 80) (i32.const 2)))
        (call $show (call $call (i32.const 48) (i32.const 18) (i32.const 96) (i32.const 80) (i32.const 2)))
        (i32.const 0))
    """, ("call", "log"))
    host.install("peeker", wat, methods=["query:"])
    replies = [json.loads(m) for m in re.findall(r"\[peeker\] (\{.*\})", host.daemon.log())]
    assert len(replies) == 2 and all("ok" in r for r in replies), replies
    libs, jobs = replies[0]["ok"], replies[1]["ok"]
    assert [lib["id"] for lib in libs] == [host.lib]  # not host.other
    assert jobs == []  # test-extension's jobs in the same library stay invisible
    assert any(j["id"] == companion for j in host.client.call("query:jobs.list.v1", {}, host.lib))
    host.healthy(companion)
