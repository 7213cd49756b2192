"""Jobs in the real daemon: kill -9 recovery, events over the socket, slow subscribers, the CLI."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from conftest import Daemon, wait_for

from rpc.client import Client


def job_info(d: Daemon, lib: str, job_id: str) -> dict:  # type: ignore[type-arg]
    return d.sd_json("job", "info", job_id, "--library", lib)


def test_kill9_mid_job_resumes_from_checkpoint(daemon: Daemon, tmpdir_short: Path) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    record = tmpdir_short / "record.txt"
    job = daemon.sd_json("job", "dispatch", "test.steps", "--library", lib, "--input",
                         json.dumps({"count": 40, "delay": 0.05, "record": str(record)}))["job_id"]
    wait_for(lambda: job_info(daemon, lib, job)["checkpoints"] >= 8)
    daemon.kill9()
    first_pid_steps = [int(ln.split()[1]) for ln in record.read_text().splitlines()]
    daemon.start()
    final = daemon.watch_job(job, lib)
    assert final["status"] == "completed"
    resumed_at = final["output"]["started_at"]
    assert resumed_at >= 8
    lines = [ln.split() for ln in record.read_text().splitlines()]
    pids = sorted({p for p, _ in lines}, key=lambda p: [q for q, _ in lines].index(p))
    assert len(pids) == 2
    first = [int(s) for p, s in lines if p == pids[0]]
    second = [int(s) for p, s in lines if p == pids[1]]
    assert first == first_pid_steps
    # Work before the checkpoint is not done again; none is skipped.
    assert second == list(range(resumed_at, 40))
    assert first[:resumed_at] == list(range(resumed_at))
    assert resumed_at >= len(first) - 1  # at most the one uncheckpointed step is redone
    hist = [t["status"] for t in final["transitions"]] if final.get("transitions") else None
    info = job_info(daemon, lib, job)
    notes = [t.get("note") or "" for t in info["transitions"]]
    assert any("requeued after the daemon stopped" in n for n in notes), info["transitions"]
    assert hist is None or hist[-1] == "completed"


def test_kill9_fails_nonresumable_and_keeps_queued(spawn: Callable[..., Daemon]) -> None:
    d = spawn(extra_args=["--max-running-jobs", "1"]).start()
    lib = d.sd_json("library", "create", "L")["id"]
    running = d.sd_json("job", "dispatch", "test.sleep", "-l", lib, "--input", '{"seconds": 30}')["job_id"]
    queued = d.sd_json("job", "dispatch", "test.steps", "-l", lib, "--input", '{"count": 3}')["job_id"]
    wait_for(lambda: job_info(d, lib, running)["status"] == "running")
    assert job_info(d, lib, queued)["status"] == "queued"
    d.kill9()
    d.start()
    info = job_info(d, lib, running)
    assert info["status"] == "failed"
    assert "daemon stopped" in info["error"]
    wait_for(lambda: job_info(d, lib, queued)["status"] == "completed")


def test_events_over_socket(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]

    async def go() -> list[dict]:  # type: ignore[type-arg]
        async with await Client.connect(daemon.socket) as c:
            await c.subscribe(library_id=lib)
            async with await Client.connect(daemon.socket) as c2:
                r = await c2.call("action:jobs.dispatch.input.v1",
                                  {"name": "test.steps", "input": {"count": 20, "delay": 0.01}}, lib)
            seen = []
            while True:
                ev = await asyncio.wait_for(c.next_event(), 10)
                assert ev is not None
                if ev.get("job_id") == r["job_id"]:
                    seen.append(ev)
                    if ev["kind"] == "job.completed":
                        return seen
    seen = asyncio.run(go())
    kinds = [e["kind"] for e in seen]
    assert kinds[0] == "job.queued" and kinds[1] == "job.started" and kinds[-1] == "job.completed"
    progress = [e for e in seen if e["kind"] == "job.progress"]
    assert progress and progress[-1]["items"] == 20 and progress[-1]["progress"] == 1.0
    assert seen[-1]["output"] == {"done": 20, "started_at": 0}


def test_subscriber_that_never_reads_does_not_stall_others(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    lazy = socket.socket(socket.AF_UNIX)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(daemon.socket))
    lazy.sendall(b'{"jsonrpc":"2.0","id":1,"method":"action:events.subscribe.input.v1"}\n')
    # Lots of events: many short jobs.
    for _ in range(3):
        daemon.sd("job", "dispatch", "test.steps", "-l", lib, "--input", '{"count": 200}', check=True)

    async def timed_status() -> float:
        async with await Client.connect(daemon.socket) as c:
            t = time.monotonic()
            await c.call("query:core.status.v1")
            return time.monotonic() - t
    for _ in range(5):
        assert asyncio.run(timed_status()) < 1.0
    wait_for(lambda: all(j["status"] == "completed" for j in daemon.sd_json("job", "list", "-l", lib)))
    assert daemon.sd_json("status")["pid"] == daemon.proc.pid
    lazy.close()


def test_cli_job_commands(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    r = daemon.sd("job", "dispatch", "test.steps", "--input", '{"count": 5}', "--wait")
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout
    r = daemon.sd("job", "dispatch", "test.steps", "--input", '{"count": 3, "fail_at": 1}', "--wait")
    assert r.returncode == 4 and "boom at step 1" in r.stderr
    job = daemon.sd_json("job", "dispatch", "test.steps", "--input",
                         '{"count": 400, "delay": 0.02}')["job_id"]
    wait_for(lambda: job_info(daemon, lib, job)["items"] >= 2)
    assert "pause requested" in daemon.sd("job", "pause", job, check=True).stdout
    wait_for(lambda: job_info(daemon, lib, job)["status"] == "paused")
    assert "queued" in daemon.sd("job", "resume", job, check=True).stdout
    wait_for(lambda: job_info(daemon, lib, job)["status"] == "running")
    daemon.sd("job", "cancel", job, check=True)
    r = daemon.sd("job", "watch", job)
    assert r.returncode == 5
    listing = daemon.sd("job", "list", check=True).stdout
    assert job in listing and "cancelled" in listing
    assert len(daemon.sd_json("job", "list", "--status", "completed")) == 1
    types = daemon.sd_json("call", "query:jobs.types.v1", "--library", lib)
    assert "test.steps" in {t["name"] for t in types}
    r = daemon.sd("job", "dispatch", "test.steps", "--input", '{"count": "x"}')
    assert r.returncode == 1 and "count" in r.stderr
