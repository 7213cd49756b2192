"""Rows of the table, printing them, and ``bench/results.json`` (stable keys)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The rows in table order; their keys are the keys of results.json["rows"].
ROW_KEYS = (
    "guest_call",
    "socket_sequential",
    "socket_concurrent",
    "dispatch_cost",
    "wasm_jobs",
    "module_load_cached",
    "indexing",
    "identify",
    "duplicates",
    "guest_read",
    "watch_lag",
    "idle_rss",
    "progress_events",
)
SCHEMA_VERSION = 1
# What a row measures, for rows that could not produce their own (a crash).
LABELS = {
    "guest_call": "ping via spacedrive_call from a guest wasm_job",
    "socket_sequential": "ping over the socket, 1 client",
    "socket_concurrent": "ping over the socket, 16 clients",
    "dispatch_cost": "JSON-RPC dispatch cost per call",
    "wasm_jobs": "trivial WASM jobs run and persisted",
    "module_load_cached": "load a ~500 KB extension from the cache",
    "indexing": "entries indexed on a 100,000-file tree",
    "identify": "content hashing (identify) of 20,000 small files",
    "duplicates": "duplicate-finder job on a tree with one-byte traps",
    "guest_read": "guest reads a 100 MB file with entry_read",
    "watch_lag": "live index lag: single files (p99) and a 10,000-file burst",
    "idle_rss": "idle daemon RSS, bundled extensions loaded",
    "progress_events": "progress events of a job reporting 100,000 times",
}


@dataclass
class Row:
    """One measured row: the figure, its same-run baseline, and the target verdict.

    ``met`` is None for report-only rows and rows that could not be measured.
    """

    key: str
    what: str
    unit: str
    value: float | None
    baseline: str
    baseline_value: float | None
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def unavailable(key: str, what: str, unit: str, target: str, why: str) -> Row:
    return Row(key, what, unit, None, "", None, None, target, None, note=why)


def fmt_num(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit in ("µs/call", "ms", "MiB"):
        s = f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:,.0f}"
    else:
        s = f"{v:,.2f}"
    return f"{s} {unit}".strip()


def _verdict(row: Row) -> str:
    if row.met is None:
        return "report" if row.value is not None else "n/a"
    return "MET" if row.met else "MISSED"


def render(rows: list[Row], header: str) -> str:
    """A plain-text table (no colours: it goes to logs and CI output)."""
    cols = ["what", "value", "baseline (same run)", "ratio", "target", "verdict"]
    lines = []
    for r in rows:
        base = f"{r.baseline}: {fmt_num(r.baseline_value, r.unit)}" if r.baseline else "-"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append([r.what, fmt_num(r.value, r.unit), base, ratio, r.target, _verdict(r)])
    widths = [max(len(c), *(len(ln[i]) for ln in lines)) for i, c in enumerate(cols)]
    out = [header, "", " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)),
           "-+-".join("-" * w for w in widths)]
    for ln in lines:
        out.append(" | ".join(v.ljust(w) for v, w in zip(ln, widths, strict=False)))
    notes = [f"  [{r.key}] {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def write_json(path: Path, rows: list[Row], machine: dict[str, Any], meta: dict[str, Any]) -> None:
    by_key = {r.key: r for r in rows}
    data = {
        "schema": SCHEMA_VERSION,
        "machine": machine,
        **meta,
        "rows": {k: _row_json(by_key[k]) if k in by_key else None for k in ROW_KEYS},
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _row_json(r: Row) -> dict[str, Any]:
    d = asdict(r)
    d.pop("key")
    return d
