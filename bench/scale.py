"""``python -m bench.scale`` (``make bench-scale``): a library of the size people have.

A tree of ``--files`` (default 1,000,000) sparse files, 1,000 to a directory, is indexed
by the real daemon (``sd-daemon`` on a temp socket, bundled extensions), driven by the
real ``sd`` CLI, and every figure is compared with a baseline measured in the same run:

* ``scale_index``: ``sd location add --wait``, entries/s, against a scandir+lstat walk
  of the same (warm) tree (target >= 50%); ``scale_rescan``: ``sd location rescan
  --wait`` of the unchanged tree, against the same walk (target >= 75%).
* ``scale_list``: every ``entries.list`` filter of docs/files.md in both orders, at
  the first page, the middle and the end (cursors placed there), 100 entries a page,
  each page timed over the socket three times (median): the slowest page (target
  <= 20 ms).
* ``scale_ls``: ``sd entries ls --ext txt --limit 0`` (a fifth of the library) into a
  file, against the same with ``--json`` (target <= 2x).
* ``scale_dupes``: the duplicate finder's time per entry on this library against its
  time per entry on a library of one tenth of it (the tree's first part), same run
  (target <= 2x).

Generating the tree takes over a minute; the whole run several minutes. Run by hand;
figures go to ``bench/results-scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.__main__ import machine
from bench.common import BIN, daemon, median, rpc, short_tmpdir
from bench.index_rows import scandir_walk
from bench.report import Row, fmt_num

RESULTS = Path(__file__).resolve().parent / "results-scale.json"
PARTS, PER_DIR = 10, 1000
EXTS = (".txt", ".jpg", ".md", ".rs", "")
TAGGED = 10_000
PAGE = 100


def make_tree(root: Path, files: int) -> int:
    """``files`` sparse files in ``PARTS`` parts of directories of ``PER_DIR`` files.

    File ``i`` is ``i`` bytes long (every size distinct), except that every 1,000th file
    repeats its predecessor's size: all-zero sparse files, so those pairs are duplicates.
    Returns the number of entries (files and directories).
    """
    per_part = files // PARTS
    dirs = 0
    for i in range(files):
        part, j = divmod(i, per_part)
        if j % PER_DIR == 0:
            d = root / f"part{part}" / f"d{j // PER_DIR:03d}"
            d.mkdir(parents=True)
            dirs += 1 + (j == 0)
        size = i - 1 if i % 1000 == 999 else i
        fd = os.open(d / f"f{i:07d}{EXTS[i % len(EXTS)]}", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    return files + dirs


class Sd:
    """The ``sd`` CLI against one daemon."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def run(self, *args: str, out: Path | None = None, timeout: float = 3600) -> float:
        """Seconds ``sd ARGS`` took; its stdout goes to ``out`` (or is checked and dropped)."""
        t0 = time.perf_counter()
        with open(out or os.devnull, "wb") as f:
            r = subprocess.run([str(BIN / "sd"), "--socket", str(self.socket), *args],
                               stdout=f, stderr=subprocess.PIPE, timeout=timeout, check=False)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"sd {' '.join(args)} -> {r.returncode}: {r.stderr.decode()[-500:]}")
        return dt

    def json(self, *args: str) -> Any:
        r = subprocess.run([str(BIN / "sd"), "--socket", str(self.socket), "--json", *args],
                           capture_output=True, timeout=600, check=True)
        return json.loads(r.stdout)


def walk_rate(root: Path, entries: int, rounds: int = 2) -> float:
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        n = scandir_walk(root, stat=True)
        rates.append(n / (time.perf_counter() - t))
        assert n == entries, (n, entries)
    return median(rates)


def page_ms(sock: Path, lib: str, query: dict[str, Any], reps: int = 3) -> tuple[float, int]:
    """The median of ``reps`` timings of one page (ms), and its length."""
    times, n = [], 0
    for _ in range(reps):
        t = time.perf_counter()
        page = rpc(sock, "query:entries.list.v1", {**query, "limit": PAGE}, lib)
        times.append((time.perf_counter() - t) * 1000)
        n = len(page["entries"])
    return median(times), n


def list_rows(sock: Path, lib: str, loc: int, files: int, db: Path) -> Row:
    """Every filter x order x depth; the slowest page against the 20 ms target."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    max_id = con.execute("SELECT max(id) FROM entries").fetchone()[0]
    parent = con.execute("SELECT parent FROM entries WHERE kind = 'file' AND id > ? LIMIT 1",
                         (max_id // 2,)).fetchone()[0]
    cas = con.execute("SELECT cas_id FROM entries WHERE cas_id IS NOT NULL AND id > ? LIMIT 1",
                      (max_id // 2,)).fetchone()[0]
    con.close()
    filters: dict[str, dict[str, Any]] = {
        "no filter": {}, "location_id": {"location_id": loc},
        "parent (1,000 children)": {"location_id": loc, "parent": parent},
        "extension (1/5)": {"extension": "txt"},
        "location_id + extension": {"location_id": loc, "extension": "md"},
        "kind file": {"kind": "file"}, "kind dir": {"kind": "dir"},
        f"tag ({TAGGED:,} entries)": {"tag": "scale"}, "cas_id": {"cas_id": cas},
        "min_size 1": {"min_size": 1}, "min_size (top 0.1%)": {"min_size": files - files // 1000},
    }
    timings: dict[str, float] = {}
    for (name, f), order in ((x, o) for x in filters.items() for o in ("id", "size")):
        for depth in (0.0, 0.5, 0.99):
            cursor = None
            if depth:
                cursor = (f"id:{int(max_id * depth)}" if order == "id"
                          else f"size:{int(files * depth)}:0")
            ms, _ = page_ms(sock, lib, {**f, "order": order, "cursor": cursor})
            timings[f"{name} / {order} / {depth:.0%}"] = ms
    worst = max(timings, key=lambda k: timings[k])
    value = timings[worst]
    return Row("scale_list", "entries.list page (100) on the library, slowest filter/order/depth",
               "ms", value, "", None, None, "<= 20 ms", value <= 20.0,
               note=(f"{len(timings)} pages ({len(filters)} filters x 2 orders x first/middle/"
                     f"end), each the median of 3 over the socket (a fresh connection each); slowest: {worst}; "
                     f"median page {median(list(timings.values())):.2f} ms"),
               extra={"pages_ms": timings})


def run(tmp: Path, files: int) -> list[Row]:
    rows: list[Row] = []
    root = tmp / "tree"
    t0 = time.perf_counter()
    entries = make_tree(root, files)
    made = time.perf_counter() - t0
    os.sync()  # as in bench/index_rows.py: no writeback of the new tree during the rows
    print(f"  tree of {entries:,} entries made in {made:.0f} s", file=sys.stderr, flush=True)
    walk = walk_rate(root, entries)
    with daemon(tmp, "scale") as d:
        sd = Sd(d.socket)
        lib = sd.json("library", "create", "scale")["id"]
        index_s = sd.run("location", "add", str(root), "--wait")
        loc = sd.json("location", "list")[0]["id"]
        rows.append(Row("scale_index", f"sd location add --wait, {entries:,} entries",
                        "entries/s", entries / index_s, "scandir+lstat walk (warm)", walk,
                        entries / index_s / walk, ">= 50%", entries / index_s / walk >= 0.5,
                        note=f"{index_s:.1f} s; tree made in {made:.0f} s"))
        walk2 = walk_rate(root, entries)
        rescan_s = sd.run("location", "rescan", str(loc), "--wait")
        rows.append(Row("scale_rescan", "sd location rescan --wait, nothing changed",
                        "entries/s", entries / rescan_s, "scandir+lstat walk (warm)", walk2,
                        entries / rescan_s / walk2, ">= 75%",
                        entries / rescan_s / walk2 >= 0.75, note=f"{rescan_s:.1f} s"))
        print("  indexed and rescanned", file=sys.stderr, flush=True)
        # Fixtures for the list rows: a tag on 10,000 entries spread over the library, and
        # cas_ids on every 10th file (written directly, as identify would: sparse files
        # would make identify read gigabytes of zeros; `make bench` measures identify).
        db = next((d.socket.parent / "scale-data").rglob(f"{lib}/library.db"))
        tag = rpc(d.socket, "action:tags.create.input.v1", {"name": "scale"}, lib)["id"]
        con = sqlite3.connect(db, timeout=60)
        step = max(1, files // TAGGED)
        ids = [r[0] for r in con.execute(
            "SELECT id FROM entries WHERE kind = 'file' AND id % ? = 0 LIMIT ?", (step, TAGGED))]
        con.execute("UPDATE entries SET cas_id = printf('%016x', size / 1000) "
                    "WHERE kind = 'file' AND id % 10 = 0")
        con.commit()
        con.close()
        for i in range(0, len(ids), 1000):
            rpc(d.socket, "action:tags.apply.input.v1", {"tag": tag, "entry_ids": ids[i:i + 1000]},
                lib)
        rows.append(list_rows(d.socket, lib, loc, files, db))
        print("  entries.list pages timed", file=sys.stderr, flush=True)
        table = tmp / "ls.txt"
        js = tmp / "ls.json"
        t_table = sd.run("entries", "ls", "--ext", "txt", "--limit", "0", out=table)
        t_json = sd.run("--json", "entries", "ls", "--ext", "txt", "--limit", "0", out=js)
        n = len(json.loads(js.read_bytes()))
        lines = sum(1 for _ in open(table, "rb")) - 1
        if lines != n:
            raise RuntimeError(f"sd entries ls printed {lines} rows, --json {n}")
        rows.append(Row("scale_ls", f"sd entries ls --ext txt --limit 0 ({n:,} rows)", "s",
                        t_table, "the same with --json", t_json, t_table / t_json, "<= 2x",
                        t_table / t_json <= 2.0, note="output to a file"))
        print("  sd entries ls timed", file=sys.stderr, flush=True)
        rows.append(dupes_row(sd, d.socket, root, lib, loc, entries))
    return rows


def dupes_row(sd: Sd, sock: Path, root: Path, lib: str, loc: int, entries: int) -> Row:
    """The finder on this library and on a library of its first tenth, per entry."""
    def finder(library: str, location: int) -> tuple[float, Any]:
        t = sd.run("job", "run", "duplicate-finder", "find", "-l", library, "--state",
                   json.dumps({"location_id": location}), "--wait")
        return t, rpc(sock, "query:tags.list.v1", {}, library)

    small = sd.json("library", "create", "scale-tenth")["id"]
    sd.run("location", "add", str(root / "part0"), "-l", small, "--wait")
    small_loc = sd.json("location", "list", "-l", small)[0]["id"]
    small_entries = sd.json("location", "list", "-l", small)[0]["entries"]
    t_small, _ = finder(small, small_loc)
    t_big, _ = finder(lib, loc)
    per_small, per_big = t_small / small_entries, t_big / entries
    ratio = per_big / per_small
    return Row("scale_dupes", f"duplicate finder, time per entry at {entries:,}", "µs/entry",
               per_big * 1e6, f"the same at {small_entries:,} entries", per_small * 1e6, ratio,
               "<= 2x", ratio <= 2.0,
               note=f"sd job run duplicate-finder find --wait: {t_big:.1f} s on {entries:,} "
                    f"entries, {t_small:.1f} s on {small_entries:,}")


def render(rows: list[Row], header: str) -> str:
    out = [header, ""]
    for r in rows:
        base = (f"{r.baseline}: {fmt_num(r.baseline_value, r.unit if r.unit != 'entries/s' else '')}"
                if r.baseline else "-")
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        verdict = "MET" if r.met else "MISSED"
        out.append(f"{r.what} | {fmt_num(r.value, r.unit)} | {base} | {ratio} | {r.target} | "
                   f"{verdict}")
        if r.note:
            out.append(f"    {r.note}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    info = machine()
    at = datetime.now(UTC)
    started = time.perf_counter()
    runner: Callable[[Path, int], list[Row]] = run
    with short_tmpdir("sds-") as tmp:
        rows = runner(tmp, args.files)
    elapsed = time.perf_counter() - started
    header = (f"sd bench-scale  {at:%Y-%m-%d %H:%M} UTC  |  os.cpu_count()={info['cpu_count']}  "
              f"|  Python {info['python']}  |  load {info['loadavg_at_start'][0]:.2f}  |  "
              f"{elapsed:.0f} s  |  {args.files:,} files")
    print(render(rows, header))
    args.json.write_text(json.dumps({
        "machine": info, "started_at": at.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 1), "files": args.files,
        "rows": {r.key: {k: v for k, v in r.__dict__.items() if k != "key"} for r in rows}},
        indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
