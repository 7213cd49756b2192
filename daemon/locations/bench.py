"""Indexer benchmark helpers (for ``bench/``): a generated tree, the indexer, and a bare walk.

``python -m daemon.locations.bench --files 100000`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

FILES_PER_DIR = 100
DIRS_PER_DIR = 10


def generate_tree(root: Path | str, files: int = 100_000, *, seed: int = 1) -> dict[str, int]:
    """Create ``files`` small sparse files (0-255 bytes of zeros) under ``root``.

    100 files per directory, directories 10 to a parent: 100,000 files make
    1,110 directories (1,000 leaves three levels deep). Returns {"files": n, "dirs": n}.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_dirs = -(-files // FILES_PER_DIR)
    width = len(str(max(n_dirs - 1, 1)))
    made_dirs: set[Path] = set()
    made = 0
    for d in range(n_dirs):
        # Leaf directory d sits at the decimal digits of d: d=123 -> d1/d2/d3.
        path = root.joinpath(*[f"d{p}" for p in str(d).zfill(width)])
        if path not in made_dirs:
            path.mkdir(parents=True, exist_ok=True)
            made_dirs.update(p for p in path.parents if root in p.parents)
            made_dirs.add(path)
        for f in range(min(FILES_PER_DIR, files - made)):
            n = (d * FILES_PER_DIR + f + seed) % 256
            fd = os.open(path / f"f{f:03d}.{('txt', 'jpg', 'bin', 'md')[f % 4]}",
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, n)  # sparse: sizes without data blocks (writing is 5x slower here)
            finally:
                os.close(fd)
            made += 1
    return {"files": made, "dirs": len(made_dirs)}


def scandir_walk(root: Path | str) -> dict[str, float]:
    """A bare ``os.scandir`` walk (with the lstat the indexer also needs): the floor."""
    t0 = time.perf_counter()
    n = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for de in it:
                n += 1
                st = de.stat(follow_symlinks=False)
                if de.is_dir(follow_symlinks=False):
                    stack.append(de.path)
                del st
    s = time.perf_counter() - t0
    return {"entries": n, "seconds": round(s, 3), "entries_per_s": round(n / s)}


async def index_tree_async(root: Path | str, data_dir: Path | str | None = None,
                           *, rescan: bool = True) -> dict[str, Any]:
    """Index ``root`` with a fresh in-process Core (no socket, no extensions).

    Returns the first index's entries, seconds and entries/s, and, with
    ``rescan``, those of an incremental rescan of the unchanged tree.
    """
    from daemon.config import DaemonConfig
    from daemon.core import Core

    tmp = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="sd-bench-")
        data_dir = tmp
    data_dir = Path(data_dir)
    cfg = DaemonConfig(data_dir=data_dir, socket_path=data_dir / "sd.sock")
    core = await Core.new_with_config(data_dir, cfg, load_extensions=False)
    try:
        lib = await core.libraries.create_library("bench")
        ex = core.dispatcher.execute_json_operation
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        added = await ex("action:locations.add.input.v1", lib.id, {"path": str(Path(root).resolve())})
        result = await (await lib.jobs.get_handle(added.job_id)).wait()
        s = time.perf_counter() - t0
        out["index"] = {"entries": result["seen"], "seconds": round(s, 3),
                        "entries_per_s": round(result["seen"] / s)}
        if rescan:
            t0 = time.perf_counter()
            r = await ex("action:locations.rescan.input.v1", lib.id, {"id": added.location.id})
            result = await (await lib.jobs.get_handle(r.job_id)).wait()
            s = time.perf_counter() - t0
            out["rescan"] = {"entries": result["seen"], "written": result["inserted"]
                             + result["updated"] + result["moved"] + result["removed"],
                             "seconds": round(s, 3), "entries_per_s": round(result["seen"] / s)}
        return out
    finally:
        await core.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def index_tree(root: Path | str, data_dir: Path | str | None = None,
               *, rescan: bool = True) -> dict[str, Any]:
    """Blocking wrapper of ``index_tree_async`` (runs its own event loop)."""
    return asyncio.run(index_tree_async(root, data_dir, rescan=rescan))


def run(files: int = 100_000, workdir: Path | str | None = None) -> dict[str, Any]:
    """Generate a tree, walk it bare, index it, rescan it; the whole comparison."""
    base = Path(tempfile.mkdtemp(prefix="sd-bench-tree-", dir=workdir))
    try:
        t0 = time.perf_counter()
        tree = generate_tree(base / "tree", files)
        gen_s = time.perf_counter() - t0
        walk = scandir_walk(base / "tree")
        indexed = index_tree(base / "tree", base / "data")
        return {"tree": {**tree, "generate_seconds": round(gen_s, 3)}, "scandir": walk, **indexed}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--workdir", default=None, help="where to generate the tree (default: $TMPDIR)")
    args = ap.parse_args()
    print(json.dumps(run(args.files, args.workdir), indent=2))


if __name__ == "__main__":
    main()
