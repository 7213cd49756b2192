"""Row 9: progress events over the socket for a job that reports 100,000 times.

The real daemon CLI with the bench's job types (``bench.daemon_with_jobs``)
runs ``bench.progress`` jobs; a raw socket client subscribed to the job events
counts the ``job.progress`` notifications of each job as they arrive. Two jobs:
one spreading its 100,000 reports over a few seconds (to measure a rate) and
one reporting as fast as it can. Met when no 1-second window holds more than
15 events of a job and each job's last progress event says 1.0 and its
``job.completed`` arrives.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from bench.common import Server, daemon, rpc
from bench.jobtypes import REPORTER
from bench.report import Row

REPORTS = 100_000
MAX_PER_S = 15
TIMEOUT_S = 60.0


class EventStream:
    """A subscribed connection, read line by line."""

    def __init__(self, path: Path, library_id: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(str(path))
        self.buf = b""
        req = {"jsonrpc": "2.0", "id": 1, "method": "action:events.subscribe.input.v1",
               "params": {"library_id": None, "payload": {
                   "kinds": ["job.started", "job.progress", "job.completed", "job.failed"],
                   "library_id": library_id}}}
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        answer = self.next()
        if answer.get("id") != 1 or "result" not in answer:
            raise RuntimeError(f"subscribe failed: {answer}")

    def next(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the daemon closed the event stream")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def close(self) -> None:
        self.sock.close()


def _watch(d: Server, lib_id: str, seconds: float) -> dict[str, Any]:
    """Run one reporter job and time its progress events as the client receives them."""
    stream = EventStream(d.socket, lib_id)
    try:
        job_id = rpc(d.socket, "action:jobs.dispatch.input.v1",
                     {"name": REPORTER, "input": {"count": REPORTS, "seconds": seconds}},
                     lib_id)["job_id"]
        times: list[float] = []
        last: dict[str, Any] | None = None
        started = completed = None
        while completed is None:
            ev = stream.next().get("params") or {}
            if ev.get("job_id") != job_id:
                continue
            now = time.monotonic()
            if ev["kind"] == "job.started":
                started = now
            elif ev["kind"] == "job.progress":
                times.append(now)
                last = ev
            elif ev["kind"] == "job.completed":
                completed = now
            else:
                raise RuntimeError(f"job {job_id} ended with {ev}")
    finally:
        stream.close()
    span = completed - (started if started is not None else (times[0] if times else completed))
    return {
        "events": len(times),
        "job_seconds": span,
        "events_per_s": len(times) / span if span > 0 else float(len(times)),
        "max_in_1s": _max_in_window(times, 1.0),
        "final_progress": None if last is None else last["progress"],
        "final_delivered": last is not None and last["progress"] == 1.0,
    }


def _max_in_window(times: list[float], window: float) -> int:
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def run(tmp: Path, *, spread_s: float) -> Row:
    with daemon(tmp, "progress", module="bench.daemon_with_jobs", bundled=None) as d:
        lib_id = rpc(d.socket, "action:libraries.create.input.v1", {"name": "bench"})["id"]
        spread = _watch(d, lib_id, spread_s)
        burst = _watch(d, lib_id, 0.0)
    worst = max(spread["max_in_1s"], burst["max_in_1s"])
    final_ok = spread["final_delivered"] and burst["final_delivered"]
    return Row(
        "progress_events", f"progress events of a job reporting {REPORTS:,} times", "events/s",
        float(worst), "", None, None, f"<= {MAX_PER_S}/s per job, final state delivered",
        worst <= MAX_PER_S and final_ok,
        note=(f"value = most events of one job in any 1 s window; job spread over "
              f"{spread['job_seconds']:.1f} s: {spread['events']} events "
              f"({spread['events_per_s']:.1f}/s); as fast as possible "
              f"({burst['job_seconds']:.2f} s): {burst['events']} events; final progress "
              f"{spread['final_progress']} / {burst['final_progress']}, job.completed received"),
        extra={"spread": spread, "burst": burst, "final_state_delivered": final_ok})
