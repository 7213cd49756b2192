"""Rows 2, 3 and 8: ping over the socket (1 and 16 clients) against a bare echo server,
and the idle daemon's resident memory.

Both servers are subprocesses (the real ``sd-daemon`` with the bundled
extensions, and ``bench.echo_server``); the client is ``bench.raw_client`` in
a third process, the same client for both. Rounds alternate echo/daemon and
the median of each is reported.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BUILT_EXTENSIONS,
    ROOT,
    Server,
    cpu_seconds,
    daemon,
    median,
    python_module,
    rpc,
    rss_mb,
)
from bench.report import Row

CONCURRENT = 16
SETTLE_S = 2.0
RSS_TARGET_MB = 60.0  # read as MiB (VmRSS is in KiB)


def _interleaved(servers: list[Server], clients: int, slice_s: float,
                 rounds: int) -> tuple[list[list[float]], list[float]]:
    """Calls/s of each server per round, measured in turn by one raw client process, and
    each server's CPU time (user + system, all threads) per answered call, in µs."""
    socks = [s.socket for s in servers]
    cpu0 = [cpu_seconds(s.pid) for s in servers]
    out = subprocess.run(
        python_module("bench.raw_client", str(clients), str(slice_s), str(rounds),
                      *map(str, socks)),
        capture_output=True, text=True, cwd=ROOT, timeout=rounds * len(socks) * (slice_s + 5) + 30,
        check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    if result["bad"]:
        raise RuntimeError(f"{result['bad']} bad answers")
    rates: list[list[float]] = result["calls_per_s"]
    cpu_us = [(cpu_seconds(s.pid) - c) / max(1, n) * 1e6
              for s, c, n in zip(servers, cpu0, result["answered"], strict=False)]
    return rates, cpu_us


# One client: >= 70% of the echo server; 16 clients: >= 85% (issue 15).
TARGETS = {1: 0.70, 16: 0.85}


def _socket_row(key: str, what: str, clients: int, rates: list[list[float]],
                cpu_us: list[float], slice_s: float) -> Row:
    base, ours = rates
    ratio = median([o / b for o, b in zip(ours, base, strict=False)])
    target = TARGETS.get(clients, 0.70)
    return Row(key, what, "calls/s", median(ours), "echo server", median(base), ratio,
               f">= {target:.0%} of echo", ratio >= target,
               note=(f"ratio = median of {len(ours)} paired {slice_s:g} s slices, echo and "
                     f"daemon alternating, one raw client process; server CPU per call: "
                     f"echo {cpu_us[0]:.1f} µs, daemon {cpu_us[1]:.1f} µs"),
               extra={"clients": clients, "server_cpu_us_per_call": {
                          "baseline": cpu_us[0], "ours": cpu_us[1]},
                      "rounds": {"ours": ours, "baseline": base}})


def run(tmp: Path, *, rounds: int, slice_s: float) -> list[Row]:
    if not (BUILT_EXTENSIONS / "test-extension").is_dir():
        raise RuntimeError("build/extensions is missing: run `make extensions` first")
    echo = Server(python_module("bench.echo_server", str(tmp / "echo.sock")),
                  tmp / "echo.sock", tmp / "echo.log")
    with daemon(tmp) as d, echo:
        loaded = [e["id"] for e in rpc(d.socket, "query:extensions.list.v1")
                  if e["state"] == "loaded"]
        bundled = sorted(p.name for p in BUILT_EXTENSIONS.iterdir() if p.is_dir())
        time.sleep(SETTLE_S)
        idle = rss_mb(d.pid)
        seq = _interleaved([echo, d], 1, slice_s, rounds)
        conc = _interleaved([echo, d], CONCURRENT, slice_s, rounds)
        busy = rss_mb(d.pid)
    rows = [
        _socket_row("socket_sequential", "ping over the socket, 1 client", 1, *seq, slice_s),
        _socket_row("socket_concurrent", f"ping over the socket, {CONCURRENT} clients",
                    CONCURRENT, *conc, slice_s),
    ]
    # The same data dir again: the bundled modules now come from the compiled cache.
    with daemon(tmp) as d:
        time.sleep(SETTLE_S)
        restarted = rss_mb(d.pid)
    missing = sorted(set(bundled) - set(loaded))
    rows.append(Row(
        "idle_rss", "idle daemon RSS, bundled extensions loaded", "MiB", idle, "", None, None,
        f"<= {RSS_TARGET_MB:.0f} MiB", idle <= RSS_TARGET_MB and not missing,
        note=(f"VmRSS {SETTLE_S:.0f} s after a first start (fresh data dir: the bundled modules "
              f"are compiled) with {', '.join(loaded) or 'nothing'} loaded; after a restart "
              f"(modules from the cache): {restarted:.1f} MiB; after the socket rows: "
              f"{busy:.1f} MiB" + (f"; NOT LOADED: {', '.join(missing)}" if missing else "")),
        extra={"loaded": loaded, "rss_restart_mib": restarted,
               "rss_after_socket_rows_mib": busy}))
    return rows
