"""``python -m bench`` (``make bench``): one table, every figure next to a baseline measured
in the same run, also written to ``bench/results.json``.

    python -m bench [--quick] [--only KEY[,KEY...]] [--json PATH]

Rows run in turn (never two at once: each wants the machine to itself); a row
that crashes is reported as an error and the others still run. Exit status 1
if any row crashed, else 0 (a missed target is a finding, shown in the table).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import uvloop

from bench import (
    dispatch_rows,
    dupes_rows,
    guest_rows,
    hash_rows,
    index_rows,
    jobs_rows,
    load_rows,
    progress_rows,
    socket_rows,
    watch_rows,
)
from bench.common import short_tmpdir
from bench.report import LABELS, ROW_KEYS, Row, render, write_json

RESULTS = Path(__file__).resolve().parent / "results.json"

# Loop sizes: (full run, --quick). The full run takes about 1-2 minutes on 2 cores.
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dispatch_cost": ({"rounds": 5, "calls": 50_000}, {"rounds": 2, "calls": 10_000}),
    "guest_call": ({"rounds": 7, "calls": 50_000}, {"rounds": 2, "calls": 10_000}),
    "wasm_jobs": ({"rounds": 5, "jobs": 300}, {"rounds": 1, "jobs": 100}),
    "module_load_cached": ({"cold_rounds": 3, "cached_rounds": 9},
                           {"cold_rounds": 1, "cached_rounds": 3}),
    "indexing": ({"rounds": 3}, {"rounds": 1, "files": 20_000}),
    "identify": ({"rounds": 3, "files": 20_000}, {"rounds": 1, "files": 2_000}),
    "duplicates": ({"rounds": 5, "unique": 6_000, "groups": 300, "big_pairs": 8},
                   {"rounds": 1, "unique": 1_000, "groups": 50, "big_pairs": 2}),
    "guest_read": ({"rounds": 9}, {"rounds": 1, "size_mb": 20}),
    "watch_lag": ({"singles": 100, "burst": 10_000}, {"singles": 20, "burst": 1_000}),
    "socket": ({"rounds": 12, "slice_s": 0.5}, {"rounds": 2, "slice_s": 0.3}),
    "progress_events": ({"spread_s": 3.0}, {"spread_s": 1.5}),
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("wasmtime", "extism", "extism-sys",
                                              "jsonrpcserver", "msgspec", "uvloop")},
    }


def _crashed(keys: tuple[str, ...], exc: BaseException) -> list[Row]:
    what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return [Row(k, LABELS[k], "", None, "", None, None, "", False, note=f"ERROR: {what}")
            for k in keys]


async def _inprocess(tmp: Path, sizes: dict[str, dict[str, Any]], only: set[str]) -> list[Row]:
    steps: list[tuple[str, Callable[[], Awaitable[Row]]]] = [
        ("dispatch_cost", lambda: dispatch_rows.run(tmp, **sizes["dispatch_cost"])),
        ("guest_call", lambda: guest_rows.run(tmp, **sizes["guest_call"])),
        ("wasm_jobs", lambda: jobs_rows.run(tmp, **sizes["wasm_jobs"])),
        ("module_load_cached", lambda: load_rows.run(tmp, **sizes["module_load_cached"])),
        ("indexing", lambda: index_rows.run(tmp, **sizes["indexing"])),
        ("identify", lambda: hash_rows.run(tmp, **sizes["identify"])),
        ("duplicates", lambda: dupes_rows.run_duplicates(tmp, **sizes["duplicates"])),
        ("guest_read", lambda: dupes_rows.run_guest_read(tmp, **sizes["guest_read"])),
        ("watch_lag", lambda: watch_rows.run(tmp, **sizes["watch_lag"])),
    ]
    rows = []
    for key, step in steps:
        if key not in only:
            continue
        _progress(key)
        try:
            rows.append(await step())
        except Exception as e:  # noqa: BLE001 - one broken row must not hide the others
            traceback.print_exc()
            rows += _crashed((key,), e)
    return rows


def _progress(key: str) -> None:
    print(f"  running {key} ...", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small loops: a smoke test, not figures")
    ap.add_argument("--only", default="", help=f"comma-separated row keys: {', '.join(ROW_KEYS)}")
    ap.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(","))) or set(ROW_KEYS)
    unknown = only - set(ROW_KEYS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}")
    sizes = {k: v[1] if args.quick else v[0] for k, v in SIZES.items()}
    info = machine()
    started = time.perf_counter()
    at = datetime.now(UTC)
    rows: list[Row] = []
    with short_tmpdir() as tmp:
        rows += uvloop.run(_inprocess(tmp, sizes, only))
        socket_keys = ("socket_sequential", "socket_concurrent", "idle_rss")
        if only & set(socket_keys):
            _progress("socket rows and idle RSS")
            try:
                rows += [r for r in socket_rows.run(tmp, **sizes["socket"]) if r.key in only]
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows += _crashed(tuple(k for k in socket_keys if k in only), e)
        if "progress_events" in only:
            _progress("progress_events")
            try:
                rows.append(progress_rows.run(tmp, **sizes["progress_events"]))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows += _crashed(("progress_events",), e)
    rows.sort(key=lambda r: ROW_KEYS.index(r.key))
    elapsed = time.perf_counter() - started
    header = (f"sd bench  {at:%Y-%m-%d %H:%M} UTC  |  os.cpu_count()={info['cpu_count']}  "
              f"({info['cpu_model'] or 'unknown cpu'})  |  Python {info['python']}  |  "
              f"load {info['loadavg_at_start'][0]:.2f}  |  {elapsed:.0f} s"
              + ("  |  --quick: NOT figures" if args.quick else ""))
    print(render(rows, header))
    write_json(args.json, rows, info, {"started_at": at.isoformat(timespec="seconds"),
                                       "duration_s": round(elapsed, 1), "quick": args.quick})
    print(f"\nwritten to {args.json}")
    return 1 if any(r.note.startswith("ERROR:") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
