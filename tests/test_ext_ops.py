"""Operating extensions through the real daemon and the CLI: failure reasons."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, BUILT_EXTENSIONS, Daemon, wait_for


class EventTap:
    """``sd --json events`` running beside a test, its lines collected in a file."""

    def __init__(self, d: Daemon, path: Path) -> None:
        self.path = path
        self._out = open(path, "wb")
        self.proc = subprocess.Popen([str(BIN / "sd"), "--socket", str(d.socket), "--json",
                                      "events"], stdout=self._out, stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.startswith("{")]

    def wait(self, pred: Any, what: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: next((e for e in self.events() if pred(e)), None), timeout, what)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._out.close()


@pytest.fixture
def tap(ext_daemon: Daemon, tmpdir_short: Path) -> Iterator[EventTap]:
    """An event tap known to be subscribed (the daemon counts it), and one library."""
    t = EventTap(ext_daemon, tmpdir_short / "events.jsonl")
    wait_for(lambda: ext_daemon.sd_json("status")["subscribers"] >= 1, 30, "the tap to subscribe")
    ext_daemon.sd("library", "create", "L", check=True)
    t.wait(lambda e: e["kind"] == "library.created", "the tap to see library.created")
    yield t
    t.close()


@pytest.mark.parametrize("job, state, reason", [
    # The SDK's state parse error (code 4): the issue's own example.
    ("counter", None, "invalid job state: missing field `target`"),
    # JobResult::failed(msg), code 2.
    ("fail", None, "deliberate failure"),
    # A Rust panic: the SDK's hook logs it, then the module traps.
    ("trap", None, "extension panicked at 'deliberate trap'"),
])
def test_failure_reason_reaches_the_user(ext_daemon: Daemon, tap: EventTap, job: str,
                                         state: str | None, reason: str) -> None:
    d = ext_daemon
    r = d.sd("job", "run", "test-extension", job, "--wait", *(["--state", state] if state else []))
    assert r.returncode == 4, r.stdout + r.stderr
    job_id = r.stdout.split("queued job ", 1)[1].split()[0]
    last = r.stderr.strip().splitlines()[-1]
    # The last line of `job run --wait`.
    assert last.startswith(f"job {job_id} failed: ") and reason in last, last
    # `job info`.
    info = d.sd_json("job", "info", job_id)
    assert info["status"] == "failed" and reason in info["error"]
    if job == "trap":
        assert "unreachable" in info["error"]  # and what the host saw
    else:
        assert f"job {job} of test-extension failed with code" in info["error"]
    r = d.sd("job", "info", job_id, check=True)
    assert reason in r.stdout
    # The error column of `job list` (human and --json).
    r = d.sd("job", "list", check=True)
    header = r.stdout.splitlines()[0].split()
    assert header[-1] == "error" and reason in r.stdout
    assert any(j["id"] == job_id and reason in j["error"] for j in d.sd_json("job", "list"))
    # The job.failed event.
    failed = tap.wait(lambda e: e["kind"] == "job.failed" and e["job_id"] == job_id,
                      "job.failed")
    assert reason in failed["error"]
    # `job watch` of the finished job ends with the same line.
    r = d.sd("job", "watch", job_id)
    assert r.returncode == 4 and reason in r.stderr.strip().splitlines()[-1]


def test_extension_jobs_are_named_by_what_they_are(ext_daemon: Daemon, tap: EventTap) -> None:
    d = ext_daemon
    r = d.sd("job", "run", "test-extension", "counter", "--state", '{"target": 3}', "--wait")
    assert r.returncode == 0, r.stderr
    # The progress bar's line names the job (rich renders it when the output is not a tty).
    assert "test-extension:counter" in r.stdout, r.stdout
    job_id = r.stdout.split("queued job ", 1)[1].split()[0]
    d.sd("job", "dispatch", "test.steps", "--input", '{"count": 1}', "--wait", check=True)
    info = d.sd_json("job", "info", job_id)
    assert (info["name"], info["type"], info["extension_id"]) == (
        "test-extension:counter", "wasm_job", "test-extension")
    # The wasm_job input stays the seed's.
    assert set(info["input"]) == {"extension_id", "export_fn", "state_json"}
    names = {j["id"]: j["name"] for j in d.sd_json("job", "list")}
    assert names[job_id] == "test-extension:counter"
    assert sorted(names.values()) == ["test-extension:counter", "test.steps"]
    r = d.sd("job", "list", check=True)
    assert "test-extension:counter" in r.stdout and "test.steps" in r.stdout
    # --extension filters.
    only = d.sd_json("job", "list", "--extension", "test-extension")
    assert [j["id"] for j in only] == [job_id]
    assert d.sd_json("job", "list", "--extension", "duplicate-finder") == []
    r = d.sd("job", "list", "--extension", "test-extension", check=True)
    assert "test-extension:counter" in r.stdout and "test.steps" not in r.stdout
    # Every event of the job carries the name.
    tap.wait(lambda e: e["kind"] == "job.completed" and e.get("job_id") == job_id, "completed")
    kinds = {e["kind"]: e["name"] for e in tap.events() if e.get("job_id") == job_id}
    assert set(kinds) >= {"job.queued", "job.started", "job.progress", "job.completed"}, kinds
    assert set(kinds.values()) == {"test-extension:counter"}
    # A job dispatched through the seed's API (wasm_job and an export) gets the name too.
    lib = d.sd_json("library", "list")[0]["id"]
    r = d.rpc("action:jobs.dispatch.input.v1", {"name": "wasm_job", "input": {
        "extension_id": "test-extension", "export_fn": "execute_test_fail"}}, lib)
    assert d.sd_json("job", "info", r["result"]["job_id"])["name"] == "test-extension:fail"


async def test_jobs_of_a_schema_2_library_keep_their_type_name(tmp_path: Path) -> None:
    """A library written before job labels existed opens, and its jobs are shown as before."""
    from daemon.jobs import store
    from daemon.libraries.db import Database
    from daemon.libraries.schema import MIGRATIONS

    old = Database(tmp_path / "library.db", MIGRATIONS[:2])
    old.run_sync(lambda c: c.execute(
        "INSERT INTO jobs (id, name, input, status, resumable, created_at, queued_at, "
        "updated_at) VALUES ('j1', 'wasm_job', '{}', 'completed', 1, 1, 1, 1)"))
    await old.close()
    db = Database(tmp_path / "library.db", MIGRATIONS)
    rows = db.run_sync(lambda c: store.list_jobs(c, None, 10, None))
    await db.close()
    assert [(r.id, r.label, r.title) for r in rows] == [("j1", None, "wasm_job")]


def _stats(d: Daemon, ext_id: str) -> dict[str, Any]:
    views = d.sd_json("ext", "stats", ext_id)
    assert [v["id"] for v in views] == [ext_id]
    return views[0]  # type: ignore[no-any-return]


def test_ext_stats_account_and_survive_restarts(ext_daemon: Daemon, tmpdir_short: Path) -> None:
    from wasm_guests import hostile, make_extension

    d = ext_daemon
    d.sd("library", "create", "L", check=True)
    d.sd("job", "run", "test-extension", "counter", "--state",
         '{"target": 5, "spin": 3000000}', "--wait", check=True)
    assert d.sd("job", "run", "test-extension", "fail", "--wait").returncode == 4
    s = _stats(d, "test-extension")["since_start"]
    assert s["jobs"] == {"completed": 1, "failed": 1}
    assert s["calls"] == {"query:test.ping.v1": 1}  # the counter pings once
    assert s["errors"] == {} and s["rate_limited"] == 0
    # init, the counter's start, ping echo, 5 counts, done, the failure's error line
    assert s["log_lines"] >= 9 and s["log_suppressed"] == 0
    assert s["guest_cpu_s"] > 0 and s["host_s"] > 0
    assert 1 << 20 <= s["peak_memory_bytes"] <= 32 << 20  # at least the SDK's 17 pages

    # A guest flooding calls: every call counted, the refused ones by code.
    perms = {"methods": ["query:test."], "libraries": "*", "max_memory_mb": 16,
             "rate_limits": {"requests_per_minute": 600, "concurrent_jobs": 1}}
    src = tmpdir_short / "src"
    d.sd("ext", "install", str(make_extension(src, "flood", hostile("call_flood", CALLS=2000),
                                              permissions=perms)), check=True)
    r = d.sd("--json", "job", "run", "flood", "run", "--wait")
    assert r.returncode == 0, r.stderr
    refused = json.loads(r.stdout.strip().splitlines()[-1])["output"]["errors"]
    f = _stats(d, "flood")["since_start"]
    assert f["calls"] == {"query:test.ping.v1": 2000}
    assert 0 < refused < 2000 and f["errors"] == {"-32004": refused}
    assert f["rate_limited"] == refused and f["jobs"] == {"completed": 1}
    # A guest flooding its log: every line is written or suppressed.
    d.sd("ext", "install", str(make_extension(src, "logger", hostile("log_flood", LINES=5000))),
         check=True)
    g = _stats(d, "logger")["since_start"]
    assert g["log_suppressed"] > 0 and g["log_lines"] + g["log_suppressed"] == 5000

    r = d.sd("ext", "stats", "test-extension", check=True)
    rows = {ln.split("  ")[1].strip() if ln.startswith("   ") else ln.split("  ")[0].strip():
            ln.split()[-2:] for ln in r.stdout.splitlines()[2:] if ln.strip()}
    assert rows["query:test.ping.v1"] == ["1", "1"] and rows["calls"] == ["1", "1"]
    assert rows["completed"] == ["1", "1"] and rows["failed"] == ["1", "1"]
    assert rows["jobs"] == ["2", "2"] and rows["errors"] == ["0", "0"]
    for text in ("guest CPU", "host time on its calls", "peak instance memory", "MiB"):
        assert text in r.stdout, (text, r.stdout)
    assert {v["id"] for v in d.sd_json("ext", "stats")} >= {"test-extension", "flood", "logger"}
    r = d.sd("ext", "stats", "no-such-ext")
    assert r.returncode == 1 and "no extension" in r.stderr

    # A clean restart: since-start figures begin again, totals stay.
    d.stop()
    d.start()
    v = _stats(d, "test-extension")
    assert v["since_start"]["jobs"] == {} and v["total"]["jobs"] == {"completed": 1, "failed": 1}
    assert v["total"]["calls"] == {"query:test.ping.v1": 1}
    assert _stats(d, "flood")["total"]["rate_limited"] == refused
    # kill -9: totals lack at most what was not saved yet; wait until it is, then kill.
    d.sd("job", "run", "test-extension", "counter", "--state", '{"target": 2}', "--wait",
         check=True)
    saved = d.data_dir / "extensions" / "stats.json"
    wait_for(lambda: json.loads(saved.read_text())["test-extension"]["jobs"].get("completed") == 2,
             30, "stats.json to hold the second completed job")
    d.kill9()
    d.start()
    v = _stats(d, "test-extension")
    assert v["total"]["jobs"] == {"completed": 2, "failed": 1}
    assert v["total"]["calls"] == {"query:test.ping.v1": 2}


def _families(text: str, openmetrics: bool = False) -> dict[str, Any]:
    """Parse exposition text with prometheus_client's own parser: it must be valid."""
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample}{labels} in {families[family].samples}")


def test_sd_metrics(tmpdir_short: Path, spawn: Callable[..., Daemon]) -> None:
    import socket

    from conftest import raw_exchange

    cfg = tmpdir_short / "config.json"
    cfg.write_text(json.dumps({"subscriber_queue": 4}))
    d = spawn(extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS), "--config", str(cfg),
                          "--max-running-jobs", "1"]).start()
    lib = d.sd_json("library", "create", "L")["id"]
    for _ in range(3):
        d.sd("call", "query:test.ping.v1", check=True)
    assert d.sd("call", "query:made.up.v1").returncode == 1
    assert d.sd("call", "query:test.ping.v1", "[1]").returncode == 1  # -32602
    d.sd("job", "run", "test-extension", "counter", "--state", '{"target": 3}', "--wait",
         check=True)
    assert d.sd("job", "run", "test-extension", "fail", "--wait").returncode == 4

    # A subscriber that never reads: once its socket and queue are full, events drop.
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(d.socket))
    stuck.sendall(b'{"jsonrpc":"2.0","id":1,"method":"action:events.subscribe.input.v1"}\n')
    wait_for(lambda: d.sd_json("status")["subscribers"] >= 1, 30, "the subscription")
    batch = [{"jsonrpc": "2.0", "id": i, "method": "action:jobs.dispatch.input.v1",
              "params": {"library_id": lib, "payload": {
                  "name": "test.big_output", "input": {"size": 60_000}}}}
             for i in range(60)]
    raw_exchange(d.socket, json.dumps(batch).encode() + b"\n")

    def dropped() -> float:
        fams = _families(d.sd("metrics", check=True).stdout)
        done = _value(fams, "sd_jobs", "sd_jobs", state="completed")
        return _value(fams, "sd_events_dropped", "sd_events_dropped_total") if done >= 61 else 0
    assert wait_for(dropped, 60, "events to be dropped") > 0

    # One job running, one waiting for the only slot.
    d.sd("job", "dispatch", "test.sleep", "--input", '{"seconds": 60}', check=True)
    d.sd("job", "dispatch", "test.steps", "--input", '{"count": 1}', check=True)
    wait_for(lambda: [j["status"] for j in d.sd_json("job", "list")][:2] == ["queued", "running"])

    r = d.sd("metrics", check=True)
    fams = _families(r.stdout)
    assert _value(fams, "sd_requests", "sd_requests_total",
                  method="query:test.ping.v1", code="ok") == 3
    assert _value(fams, "sd_requests", "sd_requests_total",
                  method="query:test.ping.v1", code="-32602") == 1
    assert _value(fams, "sd_requests", "sd_requests_total", method="unknown",
                  code="-32601") == 1
    assert not any("made.up" in s.labels.get("method", "") for s in fams["sd_requests"].samples)
    assert _value(fams, "sd_request_duration_seconds", "sd_request_duration_seconds_count",
                  method="query:test.ping.v1") == 4
    assert _value(fams, "sd_request_duration_seconds", "sd_request_duration_seconds_bucket",
                  method="query:test.ping.v1", le="+Inf") == 4
    assert _value(fams, "sd_jobs", "sd_jobs", state="failed") == 1
    assert _value(fams, "sd_jobs", "sd_jobs", state="running") == 1
    assert _value(fams, "sd_job_queue_length", "sd_job_queue_length") == 1
    assert _value(fams, "sd_extension_jobs", "sd_extension_jobs_total",
                  extension="test-extension", outcome="completed") == 1
    assert _value(fams, "sd_extension_jobs", "sd_extension_jobs_total",
                  extension="test-extension", outcome="failed") == 1
    assert _value(fams, "sd_extension_calls", "sd_extension_calls_total",
                  extension="test-extension", method="query:test.ping.v1") == 1
    assert _value(fams, "sd_extension_guest_cpu_seconds",
                  "sd_extension_guest_cpu_seconds_total", extension="test-extension") > 0
    assert _value(fams, "sd_extension_peak_memory_bytes", "sd_extension_peak_memory_bytes",
                  extension="test-extension") >= 1 << 20
    om = d.sd("metrics", "--openmetrics", check=True).stdout
    assert om.endswith("# EOF\n")
    assert _value(_families(om, openmetrics=True), "sd_jobs", "sd_jobs", state="queued") == 1
    assert d.sd_json("metrics")["content_type"].startswith("text/plain; version=0.0.4")
    stuck.close()


def test_textfile_collector_units_in_docs_work(daemon: Daemon, tmp_path: Path) -> None:
    """docs/service.md's sd-metrics units pass systemd-analyze, and their command writes a
    sd.prom that parses."""
    import re

    from conftest import ROOT

    doc = (ROOT / "docs" / "service.md").read_text()
    units = dict(re.findall(r"```ini\n# /etc/systemd/system/(sd-metrics\.\w+)\n(.*?)```", doc,
                            flags=re.S))
    assert set(units) == {"sd-metrics.service", "sd-metrics.timer"}
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "sd-metrics.service"),
                        str(tmp_path / "sd-metrics.timer")],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    service = units["sd-metrics.service"]
    command = re.search(r"^ExecStart=/bin/sh -c '(.*)'$", service, flags=re.M)
    assert command is not None
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    subprocess.run(["/bin/sh", "-c", command.group(1).replace("/usr/local/bin/sd", str(BIN / "sd"))],
                   cwd=out_dir, env={"SD_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin"},
                   check=True, timeout=60)
    assert sorted(p.name for p in out_dir.iterdir()) == ["sd.prom"]
    fams = _families((out_dir / "sd.prom").read_text())
    assert "sd_requests" in fams and "sd_jobs" in fams


def test_stats_keep_no_made_up_method_names(daemon: Daemon, tmpdir_short: Path) -> None:
    """A guest calling names no operation has: counted under one name, not under its own."""
    from wasm_guests import data, make_extension, module

    calls = "".join(
        f'(drop (call $call (i32.const 16) (i32.const {len(name)}) (i32.const 0) '
        f'(i32.const 64) (i32.const 2)))'
        for name in ["query:made.up.v1"] * 3)
    wat = module(data(16, "query:made.up.v1") + data(64, "{}")
                 + f'(func (export "plugin_init") (result i32) {calls} (i32.const 0))',
                 ("call",))
    daemon.sd("ext", "install", str(make_extension(tmpdir_short / "src", "inventor", wat)),
              check=True)
    f = _stats(daemon, "inventor")["since_start"]
    assert f["calls"] == {"(unknown method)": 3} and f["errors"] == {"-32601": 3}


def test_stats_count_each_call_once(daemon: Daemon, tmpdir_short: Path) -> None:
    """Each spacedrive_call is counted once, by how it ended: under its name (a call that
    traps too), a made-up name under "(unknown method)", a payload refused as too large
    only by its error."""
    from wasm_guests import data, make_extension, module

    ping, made_up = "query:test.ping.v1", "query:made.up.v1"

    def call(name_at: int, name: str, lib_ptr: int = 0, payload_len: int = 2) -> str:
        return (f"(drop (call $call (i32.const {name_at}) (i32.const {len(name)}) "
                f"(i32.const {lib_ptr}) (i32.const 64) (i32.const {payload_len})))")

    init = (call(16, ping, payload_len=0x7FFFFFFF) + call(16, ping) + call(16, ping)
            + call(96, made_up) + call(16, ping, lib_ptr=0x7FFFFFF0))  # the last one traps
    wat = module(data(16, ping) + data(64, "{}") + data(96, made_up)
                 + f'(func (export "plugin_init") (result i32) {init} (i32.const 0))', ("call",))
    r = daemon.sd("ext", "install", str(make_extension(tmpdir_short / "src", "caller", wat)))
    assert r.returncode != 0 and "out of bounds" in r.stderr, r.stderr
    f = _stats(daemon, "caller")["since_start"]
    assert f["calls"] == {ping: 3, "(unknown method)": 1}
    assert f["errors"] == {"-32005": 1, "-32601": 1}


def test_status_counts_client_subscribers_only(ext_daemon: Daemon, tmpdir_short: Path) -> None:
    """The daemon's own listeners (the extension trigger service, the watcher) are not
    subscribers: `status` and `sd metrics` count the clients streaming events."""
    d = ext_daemon
    assert d.sd_json("ext", "list")  # the bundled extensions (and their triggers) are loaded
    assert d.sd_json("status")["subscribers"] == 0
    assert "sd_event_subscribers 0.0" in d.sd("metrics", check=True).stdout
    t = EventTap(d, tmpdir_short / "events.jsonl")
    try:
        wait_for(lambda: d.sd_json("status")["subscribers"] == 1, 30, "the tap to subscribe")
    finally:
        t.close()
    # A peer that closed looks half-closed (EOF) until an event written to it fails.
    d.sd("library", "create", "after-the-tap", check=True)
    wait_for(lambda: d.sd_json("status")["subscribers"] == 0, 30, "the tap to go away")
