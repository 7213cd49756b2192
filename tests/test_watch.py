"""Live watching in the real daemon: real files in temp dirs, inotify, entries.* events.

Each test ends by checking the live index against what a rescan finds: a rescan
right after must have nothing to insert, update, move or remove.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_for

from rpc.client import Client, SyncClient

ENTRY_KINDS = ["entries.created", "entries.modified", "entries.moved", "entries.removed"]


class Tap:
    """Collects events from the daemon's socket on a thread of its own."""

    def __init__(self, socket: Path, kinds: list[str]) -> None:
        self.socket, self.kinds = socket, kinds
        self.events: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "event subscription"

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with await Client.connect(self.socket) as c:
            await c.subscribe(self.kinds)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    ev = await asyncio.wait_for(c.next_event(), 0.2)
                except TimeoutError:
                    continue
                if ev is None:
                    return
                self.events.append(ev)

    def ids(self, kind: str) -> set[int]:
        return {i for e in list(self.events) if e["kind"] == kind for i in e["entry_ids"]}

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def call(d: Daemon, method: str, payload: Any = None, lib: str | None = None) -> Any:
    with SyncClient(d.socket) as c:
        return c.call(method, payload or {}, lib)


def index(d: Daemon, lib: str, loc: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page = call(d, "query:entries.list.v1",
                    {"location_id": loc, "limit": 1000, "cursor": cursor}, lib)
        out.update({e["path"]: e for e in page["entries"]})
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def location(d: Daemon, lib: str, loc: int) -> dict[str, Any]:
    return next(r for r in d.sd_json("location", "list", "--library", lib) if r["id"] == loc)


def add(d: Daemon, lib: str, tree: Path, *flags: str) -> int:
    r = d.sd("--json", "location", "add", str(tree), "--library", lib, "--wait", *flags,
             timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["status"] == "completed", info
    return int(info["output"]["location_id"])


def rescan_finds_nothing(d: Daemon, lib: str, loc: int) -> None:
    """The live index is what a rescan would have made."""
    job = d.sd_json("location", "rescan", str(loc), "--library", lib)["job_id"]
    out = d.watch_job(job, lib)["output"]
    assert (out["inserted"], out["updated"], out["moved"], out["removed"]) == (0, 0, 0, 0), out


def settled(d: Daemon, lib: str, loc: int, root: Path) -> dict[str, dict[str, Any]]:
    """Wait until the index holds exactly what is on disk; returns it."""
    want = on_disk(root)
    return wait_for(lambda: (ix := index(d, lib, loc)) and set(ix) == want and ix, 30,
                    lambda: f"the index to match the disk: {sorted(set(index(d, lib, loc)) ^ want)[:10]}")


@pytest.fixture
def tree(tmpdir_short: Path) -> Path:
    root = tmpdir_short / "tree"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.txt").write_bytes(b"x" * 100)
    (root / "keep.txt").write_bytes(b"keep")
    return root


def test_create_modify_move_delete_reach_the_index(daemon: Daemon, tree: Path,
                                                   tmpdir_short: Path) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    loc = add(daemon, lib, tree)
    assert location(daemon, lib, loc)["watch_state"] == "watching"
    daemon.sd("location", "identify", str(loc), "--library", lib, "--wait", check=True)
    ix = index(daemon, lib, loc)
    x_id, keep_id, a_id = ix["a/x.txt"]["id"], ix["keep.txt"]["id"], ix["a"]["id"]
    assert ix["keep.txt"]["cas_id"]
    daemon.sd("tag", "create", "t1", "--library", lib, check=True)
    daemon.sd("tag", "apply", "t1", str(x_id), "--library", lib, check=True)
    tap = Tap(daemon.socket, ENTRY_KINDS)
    try:
        # create
        (tree / "new.txt").write_bytes(b"new")
        new_id = settled(daemon, lib, loc, tree)["new.txt"]["id"]
        wait_for(lambda: new_id in tap.ids("entries.created"), 10, "entries.created")
        # modify: the content hash is cleared
        with open(tree / "keep.txt", "ab") as f:
            f.write(b" more")
        e = wait_for(lambda: (e := index(daemon, lib, loc)["keep.txt"])["size"] == 9 and e, 10,
                     "keep.txt's new size")
        assert e["id"] == keep_id and e["cas_id"] is None
        wait_for(lambda: keep_id in tap.ids("entries.modified"), 10, "entries.modified")
        # move a file between directories: same id, tag kept
        os.rename(tree / "a" / "x.txt", tree / "b" / "y.txt")
        ix = settled(daemon, lib, loc, tree)
        assert ix["b/y.txt"]["id"] == x_id
        assert call(daemon, "query:entries.get.v1", {"id": x_id}, lib)["tags"] == ["t1"]
        wait_for(lambda: x_id in tap.ids("entries.moved"), 10, "entries.moved")
        # move a directory with its contents: ids kept below it too
        (tree / "a" / "deep").mkdir()
        (tree / "a" / "deep" / "z.bin").write_bytes(b"z" * 10)
        z_id = settled(daemon, lib, loc, tree)["a/deep/z.bin"]["id"]
        os.rename(tree / "a", tree / "c")
        ix = settled(daemon, lib, loc, tree)
        assert ix["c"]["id"] == a_id and ix["c/deep/z.bin"]["id"] == z_id
        (tree / "c" / "deep" / "after-move.txt").write_bytes(b"1")  # the moved watch follows
        settled(daemon, lib, loc, tree)
        # move out of the location: removed
        outside = tmpdir_short / "outside"
        outside.mkdir()
        os.rename(tree / "b" / "y.txt", outside / "y.txt")
        settled(daemon, lib, loc, tree)
        wait_for(lambda: x_id in tap.ids("entries.removed"), 10, "entries.removed")
        # a directory moved in from outside: walked and watched
        (outside / "in" / "sub").mkdir(parents=True)
        (outside / "in" / "sub" / "f.txt").write_bytes(b"f")
        os.rename(outside / "in", tree / "in")
        ix = settled(daemon, lib, loc, tree)
        assert ix["in/sub/f.txt"]["id"] in tap.ids("entries.created")
        (tree / "in" / "sub" / "g.txt").write_bytes(b"g")
        settled(daemon, lib, loc, tree)
        # a directory moved out: no longer watched (changes there are not indexed)
        os.rename(tree / "c", outside / "c")
        settled(daemon, lib, loc, tree)
        assert z_id in tap.ids("entries.removed")
        # delete
        (tree / "new.txt").unlink()
        shutil.rmtree(tree / "in")
        settled(daemon, lib, loc, tree)
        wait_for(lambda: new_id in tap.ids("entries.removed"), 10, "entries.removed")
    finally:
        tap.close()
    rescan_finds_nothing(daemon, lib, loc)


def test_a_burst_of_10000_files(daemon: Daemon, tree: Path) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    loc = add(daemon, lib, tree)
    tap = Tap(daemon.socket, ["entries.created"])
    try:
        (tree / "burst").mkdir()
        for i in range(10_000):
            (tree / ("burst" if i % 2 else ".") / f"f{i:05}.dat").write_bytes(b"")
        ix = settled(daemon, lib, loc, tree)
        new = {e["id"] for p, e in ix.items() if p.endswith(".dat")}
        assert len(new) == 10_000
        wait_for(lambda: new <= tap.ids("entries.created"), 10, "entries.created for all")
    finally:
        tap.close()
    rescan_finds_nothing(daemon, lib, loc)


def test_queue_overflow_falls_back_to_a_rescan(daemon: Daemon, tree: Path) -> None:
    """A real overflow: the daemon is stopped (SIGSTOP) while more events than the kernel
    queues (fs.inotify.max_queued_events) happen, then continued."""
    lib = daemon.sd_json("library", "create", "L")["id"]
    loc = add(daemon, lib, tree)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        for i in range(20):
            (tree / "b" / f"lost{i}.txt").write_bytes(b"l")
        fds = [os.open(tree / n, os.O_WRONLY | os.O_APPEND) for n in ("keep.txt", "a/x.txt")]
        for _ in range(limit // 2 + 100):  # alternating names: the kernel merges no two
            for fd in fds:
                os.write(fd, b".")
        for fd in fds:
            os.close(fd)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    settled(daemon, lib, loc, tree)

    def fallback_job() -> dict[str, Any] | None:
        jobs = daemon.sd_json("job", "list", "--library", lib)
        return next((j for j in jobs if any("overflowed" in w for w in j["warnings"])), None)
    job = wait_for(fallback_job, 30, "a rescan job warning about the overflow")
    assert job["name"] == "locations.index"
    row = location(daemon, lib, loc)
    assert row["watch_note"].startswith("queue overflow at") and job["id"] in row["watch_note"]
    daemon.watch_job(job["id"], lib)
    assert index(daemon, lib, loc)["keep.txt"]["size"] == 4 + limit // 2 + 100
    wait_for(lambda: location(daemon, lib, loc)["watch_state"] == "watching", 10, "watching")
    r = daemon.sd("location", "list", "--library", lib, check=True)
    assert "queue overflow at" in r.stdout
    (tree / "b" / "after.txt").write_bytes(b"a")  # watching again
    settled(daemon, lib, loc, tree)
    rescan_finds_nothing(daemon, lib, loc)


def test_watch_limit_falls_back_to_rescans(tmpdir_short: Path, tree: Path,
                                           spawn: Callable[..., Daemon]) -> None:
    config = tmpdir_short / "config.json"
    config.write_text(json.dumps({"max_watches_per_location": 4, "watch_retry_s": 1.0}))
    d = spawn(extra_args=["--config", str(config)]).start()
    lib = d.sd_json("library", "create", "L")["id"]
    loc = add(d, lib, tree)  # root, a, b: 3 watches
    for n in ("p", "q", "r"):
        (tree / n).mkdir()
        (tree / n / "f.txt").write_bytes(n.encode())

    def fallback_job() -> dict[str, Any] | None:
        jobs = d.sd_json("job", "list", "--library", lib)
        return next((j for j in jobs if any("max_watches_per_location" in w
                                            for w in j["warnings"])), None)
    job = wait_for(fallback_job, 30, "a rescan job warning about the watch limit")
    d.watch_job(job["id"], lib)
    settled(d, lib, loc, tree)
    row = location(d, lib, loc)
    assert row["watch_state"].startswith("limited: the daemon's max_watches_per_location (4)")
    assert row["watch_note"].startswith("watch limit at")
    r = d.sd("location", "list", "--library", lib, check=True)
    assert "limited" in r.stdout
    (tree / "a" / "still-live.txt").write_bytes(b"s")  # watched directories stay live
    settled(d, lib, loc, tree)
    # Still limited when watched afresh (watch_retry_s): rescanned again, and what changed
    # in a directory that is not watched is found by that rescan.
    (tree / "r" / "unwatched.txt").write_bytes(b"u")
    settled(d, lib, loc, tree)
    limit_jobs = [j for j in d.sd_json("job", "list", "--library", lib)
                  if any("max_watches_per_location" in w for w in j["warnings"])]
    assert len(limit_jobs) >= 2


def test_no_watch_and_watch_on_off(daemon: Daemon, tree: Path, tmpdir_short: Path) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    quiet = add(daemon, lib, tree, "--no-watch")
    other = tmpdir_short / "other"
    other.mkdir()
    live_loc = add(daemon, lib, other)
    assert location(daemon, lib, quiet)["watch_state"] == "off"
    assert location(daemon, lib, quiet)["watch"] is False
    (tree / "unseen.txt").write_bytes(b"u")
    (other / "seen.txt").write_bytes(b"s")
    settled(daemon, lib, live_loc, other)  # the daemon has handled the events by now
    assert "unseen.txt" not in index(daemon, lib, quiet)
    r = daemon.sd_json("location", "watch", str(quiet), "on", "--library", lib)
    assert r["location"]["watch_state"] == "watching" and r["job_id"]
    daemon.watch_job(r["job_id"], lib)
    assert "unseen.txt" in index(daemon, lib, quiet)
    (tree / "now-seen.txt").write_bytes(b"n")
    settled(daemon, lib, quiet, tree)
    r = daemon.sd("location", "watch", str(quiet), "off", "--library", lib, check=True)
    assert "off" in r.stdout
    assert location(daemon, lib, quiet)["watch"] is False


def test_kill_9_while_files_change_then_the_next_start_reconciles(
        tree: Path, spawn: Callable[..., Daemon]) -> None:
    d = spawn().start()
    lib = d.sd_json("library", "create", "L")["id"]
    loc = add(d, lib, tree)
    stop = threading.Event()
    made = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            (tree / "b" / f"c{i}.txt").write_bytes(b"c")
            if i % 3 == 0 and i:
                (tree / "b" / f"c{i // 2}.txt").unlink(missing_ok=True)
            if i % 7 == 1:
                os.replace(tree / "b" / f"c{i}.txt", tree / "a" / f"m{i}.txt")
            i += 1
            if i == 300:
                made.set()
    t = threading.Thread(target=churn)
    t.start()
    try:
        assert made.wait(30)
        d.kill9()
    finally:
        stop.set()
        t.join()
    (tree / "while-down.txt").write_bytes(b"d")
    d.start()
    settled(d, lib, loc, tree)
    jobs = [j for j in d.sd_json("job", "list", "--library", lib) if j["name"] == "locations.index"]
    assert len(jobs) >= 2  # the first index, and the reconciling rescan at start
    wait_for(lambda: all(j["status"] == "completed" for j in d.sd_json(
        "job", "list", "--library", lib)), 30, "the rescan to finish")
    (tree / "after-restart.txt").write_bytes(b"r")
    settled(d, lib, loc, tree)
    rescan_finds_nothing(d, lib, loc)


def test_walk_dirs_finds_every_directory_without_listing_leaves(tmp_path: Path) -> None:
    """The watcher's set-up walk skips listing directories that have no subdirectory by
    their link count (ext4, xfs, tmpfs): it must still find exactly what a full walk does."""
    from daemon.locations.live import _devices_counting_subdirs, walk_dirs
    root = tmp_path / "root"
    for d in ("a/b/c", "a/leaf", "empty", "x/y", "x/z/w/v"):
        (root / d).mkdir(parents=True)
    for d in ("a", "a/leaf", "x/y", "x/z/w/v", ""):
        for i in range(30):
            (root / d / f"f{i}").write_bytes(b"")
    (root / "x" / "link").symlink_to(root / "a")  # not followed
    full, stack = [""], [""]
    while stack:
        rel = stack.pop()
        for de in os.scandir(root / rel):
            if de.is_dir(follow_symlinks=False):
                full.append(f"{rel}/{de.name}" if rel else de.name)
                stack.append(full[-1])
    got = walk_dirs(str(root))
    assert sorted(got) == sorted(full) and len(got) == len(set(got)) == 11
    assert all(got.index(p.rsplit("/", 1)[0]) < got.index(p) for p in got if "/" in p)
    if os.stat(root).st_dev in _devices_counting_subdirs():
        (root / "a" / "leaf" / "late").mkdir()  # a leaf no longer: found again
        assert "a/leaf/late" in walk_dirs(str(root))
