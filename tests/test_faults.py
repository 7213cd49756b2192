"""Faults are input too (issue 13): half-closed clients, a damaged module cache, a corrupt
library, a full disk, kill -9 during creates, a module file that is not WebAssembly.

Each test runs the real daemon; docs/reliability.md has the table of faults and answers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BUILT_EXTENSIONS, Daemon, fill, wait_for


def half_closed_exchange(path: Path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data``, shut down the sending side (like ``socat -t`` or ``nc -N``), read to EOF."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
        return buf


def req(id: int, method: str, payload: object = None) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": {"payload": payload or {}}}


def test_half_closed_client_gets_every_reply(daemon: Daemon) -> None:
    sleep = req(1, "query:test.sleep.v1", {"seconds": 0.5})
    out = half_closed_exchange(daemon.socket, json.dumps(sleep).encode() + b"\n")
    assert [json.loads(x) for x in out.splitlines()] == [
        {"jsonrpc": "2.0", "id": 1, "result": {"slept": 0.5}}]

    # A batch with a slow member, two pipelined requests, and a last line without "\n".
    batch = [req(2, "query:test.ping.v1", {"a": 1}), req(3, "query:test.sleep.v1", {"seconds": 0.3})]
    data = (json.dumps(batch) + "\n" + json.dumps(req(4, "query:test.sleep.v1", {"seconds": 0.2}))
            + "\n" + json.dumps(req(5, "query:test.ping.v1", {"last": True}))).encode()
    replies = [json.loads(x) for x in half_closed_exchange(daemon.socket, data).splitlines()]
    by_id: dict[object, object] = {}
    for r in replies:
        for m in r if isinstance(r, list) else [r]:
            by_id[m["id"]] = m["result"]
    assert by_id == {2: {"echo": {"a": 1}}, 3: {"slept": 0.3}, 4: {"slept": 0.2},
                     5: {"echo": {"last": True}}}
    assert isinstance(replies[[isinstance(r, list) for r in replies].index(True)], list)
    # The daemon closed the connection once everything was answered (recv saw EOF) and serves on.
    assert daemon.rpc("query:test.ping.v1", {"x": 1})["result"] == {"echo": {"x": 1}}

    # A subscriber that stops writing still reads its events (`sd events`-like pipelines).
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(json.dumps(req(6, "action:events.subscribe.input.v1",
                                 {"kinds": ["library.created"]})).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        lines = s.makefile("rb")
        assert json.loads(lines.readline())["id"] == 6
        lib = daemon.rpc("action:libraries.create.input.v1", {"name": "Seen"})["result"]["id"]
        event = json.loads(lines.readline())
        assert event["params"]["kind"] == "library.created" and event["params"]["library_id"] == lib


def test_damaged_module_cache_is_rebuilt_not_trusted(spawn: Callable[..., Daemon]) -> None:
    d = spawn(extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS)]).start()
    d.stop()
    entries = sorted(p for p in (d.data_dir / "extensions" / ".cache").iterdir() if p.is_file())
    assert len(entries) >= 2
    # 4 KiB of garbage in the middle of one entry; a single flipped byte at the end of another.
    with open(entries[0], "r+b") as f:
        f.seek(entries[0].stat().st_size // 2)
        f.write(os.urandom(4096))
    with open(entries[1], "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))
    d.start()
    assert {e["id"]: e["state"] for e in d.sd_json("ext", "list")}["test-extension"] == "loaded"
    d.sd("library", "create", "L", check=True)
    r = d.sd("job", "run", "test-extension", "counter", "--state", '{"current":0,"target":3}', "--wait")
    assert r.returncode == 0 and '"current":3' in r.stdout, r.stdout + r.stderr
    for entry in entries[:2]:
        assert f"module cache entry {entry} is damaged" in d.log()
    d.stop()
    # Rebuilt: the next start loads every extension from the cache, with no warning.
    log_len = len(d.log())
    d.start()
    later = d.log()[log_len:]
    assert "damaged" not in later and later.count("loaded (") == later.count(", cached)") >= 2
    d.stop()


def test_non_webassembly_module_is_named_as_such(daemon: Daemon, tmpdir_short: Path) -> None:
    ext = tmpdir_short / "garbage-ext"
    ext.mkdir()
    shutil.copy(BUILT_EXTENSIONS / "test-extension" / "manifest.json", ext / "manifest.json")
    (ext / "test_extension.wasm").write_bytes(b"\x7fELF" + os.urandom(2000))
    r = daemon.sd("ext", "install", str(ext))
    assert r.returncode == 1
    assert "test_extension.wasm is not a WebAssembly module" in r.stderr, r.stderr
    assert "utf-8" not in r.stderr


async def test_a_closed_library_database_answers_unavailable_not_internal(tmp_path: Path) -> None:
    """A request that found a library just before it was deleted or isolated reaches a
    closed database: a -32040 naming the file, never -32603."""
    from daemon import errors
    from daemon.libraries.db import Database
    from daemon.libraries.schema import MIGRATIONS

    db = Database(tmp_path / "library.db", MIGRATIONS)
    await db.close()
    with pytest.raises(errors.LibraryUnavailable, match="library.db is closed"):
        await db.run(lambda c: c.execute("SELECT 1").fetchall())
    db.corrupt = f"{db.path} is damaged: database disk image is malformed"
    with pytest.raises(errors.LibraryUnavailable, match="is damaged"):
        db.run_sync(lambda c: c.execute("SELECT 1").fetchall())


def fill_library(d: Daemon, lib: str, jobs: int = 40) -> None:
    """Enough rows that the database has pages beyond the ones a corruption test overwrites."""
    for _ in range(jobs):
        r = d.rpc("action:jobs.dispatch.input.v1", {"name": "test.steps", "input": {"count": 5}}, lib)
        assert "result" in r, r
    wait_for(lambda: all(not d.rpc("query:jobs.list.v1", {"status": s}, lib)["result"]
                         for s in ("queued", "running")))


def test_corrupt_library_is_isolated(spawn: Callable[..., Daemon]) -> None:
    d = spawn().start()
    good = d.sd_json("library", "create", "Good")["id"]
    pages = d.sd_json("library", "create", "BadPages")["id"]
    header = d.sd_json("library", "create", "BadHeader")["id"]
    for lib in (pages, header):
        fill_library(d, lib)
    job = d.sd_json("job", "dispatch", "test.steps", "--library", good, "--input",
                    json.dumps({"count": 30, "delay": 0.03}))["job_id"]
    assert d.stop() == 0  # a clean stop: the job pauses and resumes at the next start
    db = {lib: d.data_dir / "libraries" / lib / "library.db" for lib in (pages, header)}
    with open(db[pages], "r+b") as f:  # header intact, pages 3-5 garbage
        f.seek(8192)
        f.write(os.urandom(20480 - 8192))
    with open(db[header], "r+b") as f:
        f.write(os.urandom(100))

    d.start()  # the daemon starts and serves the other library
    assert d.watch_job(job, good)["status"] == "completed"
    r = d.sd("library", "check", pages)
    assert r.returncode == 1 and "damaged" in r.stdout and str(db[pages]) in r.stdout, r.stdout
    libs = {x["id"]: x for x in d.sd_json("library", "list")}
    assert libs[good]["state"] == "available" and libs[good]["error"] is None
    for lib in (pages, header):
        assert libs[lib]["state"] == "unavailable"
        assert str(db[lib]) in libs[lib]["error"], libs[lib]
    assert "file is not a database" in libs[header]["error"]
    human = d.sd("library", "list").stdout
    assert "unavailable" in human and str(db[header]) in human
    # Operations on it: a dedicated code, the reason naming the file.
    r = d.rpc("query:jobs.list.v1", {}, header)
    assert r["error"]["code"] == -32040 and str(db[header]) in r["error"]["message"], r
    r = d.sd("job", "dispatch", "test.noop", "--library", pages, "--input", "{}")
    assert r.returncode == 1 and "unavailable" in r.stderr and str(db[pages]) in r.stderr
    r = d.sd("library", "check", good)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
    # New work in the good library goes on; the bad ones can be deleted.
    other = d.sd_json("job", "dispatch", "test.steps", "--library", good, "--input", '{"count": 3}')
    assert d.watch_job(other["job_id"], good)["status"] == "completed"
    for lib in (pages, header):
        assert d.sd("library", "delete", lib).returncode == 0
        assert not db[lib].parent.exists()
    assert [x["id"] for x in d.sd_json("library", "list")] == [good]
    assert d.stop() == 0
    assert "Traceback" not in d.log()


def test_full_disk_pauses_jobs_and_recovers_without_restart(
        small_disk: Path, spawn: Callable[..., Daemon]) -> None:
    d = spawn(small_disk, extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS),
                                      "--max-running-jobs", "2"])
    d.start()
    lib = d.sd_json("library", "create", "L")["id"]
    info = lambda j: d.rpc("query:jobs.info.v1", {"id": j}, lib)["result"]  # noqa: E731
    native = d.sd_json("job", "dispatch", "test.steps", "--input",
                       '{"count": 1000000, "delay": 0.01}')["job_id"]
    # Slow checkpoints: the disk must fill while the write-ahead log still has to grow (once
    # it reaches 1000 pages SQLite reuses it, and writes then need no new space).
    wasm = d.sd_json("job", "run", "test-extension", "counter", "--state",
                     '{"current": 0, "target": 1000000, "spin": 20000000}')["job_id"]
    queued = [d.sd_json("job", "dispatch", "test.steps", "--input", '{"count": 3}')["job_id"]
              for _ in range(4)]
    wait_for(lambda: info(native)["checkpoints"] >= 1 and info(wasm)["checkpoints"] >= 1)
    libraries_before = sorted(os.listdir(small_disk / "libraries"))

    fill(small_disk / "filler")
    # Both running jobs pause with the reason and give up their slots; the queued ones stay
    # queued (they cannot be marked running) instead of dying.
    for job in (native, wasm):
        wait_for(lambda j=job: info(j)["status"] == "paused", timeout=30,  # type: ignore[misc]
                 what=lambda j=job: f"job {j} pauses on the full disk: {info(j)}")  # type: ignore[misc]
        assert info(job)["pause_reason"] == "disk full"
    wait_for(lambda: d.rpc("query:core.status.v1")["result"]["running_jobs"] == 0,
             what="no job holds a slot")
    assert [info(j)["status"] for j in queued] == ["queued"] * 4
    saved = {j: info(j)["checkpoint"] for j in (native, wasm)}
    # Requests that need space: a dedicated code and a clear message, not -32603.
    r = d.rpc("action:libraries.create.input.v1", {"name": "More"})
    assert r["error"]["code"] == -32041 and "is full" in r["error"]["message"], r
    r = d.sd("library", "create", "More")
    assert r.returncode == 1 and "is full" in r.stderr and "internal" not in r.stderr, r.stderr
    assert sorted(os.listdir(small_disk / "libraries")) == libraries_before  # no leftover
    # Cancel always ends a job, even before it can be written.
    assert d.sd_json("job", "cancel", queued[3], "--library", lib) == {"status": "cancelled"}
    assert d.sd_json("job", "cancel", native, "--library", lib) == {"status": "cancelled"}
    assert info(queued[3])["status"] == info(native)["status"] == "cancelled"

    (small_disk / "filler").unlink()
    # Room again, no restart: queued jobs run, the paused job resumes, requests succeed.
    for job in queued[:3]:
        assert d.watch_job(job, lib, timeout=60)["status"] == "completed"
    wait_for(lambda: info(wasm)["status"] == "running"
             and info(wasm)["checkpoint"]["current"] > saved[wasm]["current"], timeout=30,
             what=lambda: f"the paused job resumes: {info(wasm)}")
    assert d.sd_json("job", "cancel", wasm, "--library", lib)["status"] in ("cancel_requested",
                                                                            "cancelled")
    wait_for(lambda: info(wasm)["status"] == "cancelled", what=lambda: f"cancelled: {info(wasm)}")
    more = d.sd_json("library", "create", "More")["id"]
    assert d.stop() == 0

    # Nothing committed was lost; every state change held in memory reached the database.
    for path in (small_disk / "libraries").iterdir():
        with sqlite3.connect(path / "library.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with sqlite3.connect(small_disk / "libraries" / lib / "library.db") as conn:
        rows = dict(conn.execute("SELECT id, status FROM jobs"))
        ckpt = json.loads(conn.execute("SELECT checkpoint FROM jobs WHERE id = ?", (native,)).fetchone()[0])
    assert rows[native] == rows[wasm] == rows[queued[3]] == "cancelled"
    assert [rows[j] for j in queued[:3]] == ["completed"] * 3
    assert ckpt["next"] >= saved[native]["next"]
    d.start()
    assert {x["id"] for x in d.sd_json("library", "list")} == {lib, more}
    assert "Task exception was never retrieved" not in d.log() and "Traceback" not in d.log()
    d.stop()


def test_kill9_loop_during_creates_and_dispatches(spawn: Callable[..., Daemon]) -> None:
    """At random moments while a client creates libraries and dispatches jobs: kill -9,
    restart, and check that nothing acknowledged was lost and nothing half-made shows."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    d = spawn()
    libraries: dict[str, str] = {}  # acknowledged: id -> name
    jobs: dict[str, str] = {}  # acknowledged: job id -> library id
    kills = 0
    for _round in range(10):
        d.start()
        check_after_restart(d, libraries, jobs, seed)
        stop = threading.Event()
        client = threading.Thread(target=busy_client, args=(d, libraries, jobs, stop, rng))
        client.start()
        # The random moment of the kill (not synchronisation: any moment must be safe).
        stop.wait(rng.uniform(0.05, 0.5))
        d.kill9()
        kills += 1
        stop.set()
        client.join(10)
        assert not client.is_alive()
    d.start()
    check_after_restart(d, libraries, jobs, seed)
    d.stop()
    assert kills >= 10 and len(libraries) >= kills, (kills, len(libraries), seed)


def busy_client(d: Daemon, libraries: dict[str, str], jobs: dict[str, str],
                stop: threading.Event, rng: random.Random) -> None:
    """Create libraries and dispatch jobs until the daemon goes away; record what was acknowledged."""
    n = len(libraries)
    while not stop.is_set():
        try:
            name = f"lib-{n}"
            r = d.rpc("action:libraries.create.input.v1", {"name": name})
            libraries[r["result"]["id"]] = name
            n += 1
            for _ in range(3):
                lib = rng.choice(list(libraries))
                job = (("test.steps", {"count": 3, "delay": 0.01}) if rng.random() < 0.8
                       else ("test.sleep", {"seconds": 0.05}))
                r = d.rpc("action:jobs.dispatch.input.v1", {"name": job[0], "input": job[1]}, lib)
                jobs[r["result"]["job_id"]] = lib
        except (OSError, ValueError, KeyError):
            return  # the daemon was killed under the request: not acknowledged


def check_after_restart(d: Daemon, libraries: dict[str, str], jobs: dict[str, str],
                        seed: int) -> None:
    listed = {x["id"]: x for x in d.rpc("query:libraries.list.v1")["result"]}
    # Every acknowledged library exists; none is named by its id or half made.
    assert set(libraries) <= set(listed), (set(libraries) - set(listed), seed)
    for lib_id, info in listed.items():
        assert info["state"] == "available", (info, seed)
        assert info["name"] != lib_id and info["name"].startswith("lib-"), (info, seed)
        libraries.setdefault(lib_id, info["name"])  # created, but killed before the answer
    assert sorted(os.listdir(d.data_dir / "libraries")) == sorted(listed), seed
    for lib_id in listed:
        conn = sqlite3.connect(f"file:{d.data_dir / 'libraries' / lib_id / 'library.db'}?mode=ro",
                               uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], seed
        finally:
            conn.close()

    def all_final() -> bool:
        status = {}
        for lib in set(jobs.values()):
            for job in d.rpc("query:jobs.list.v1", {"limit": 10000}, lib)["result"]:
                status[job["id"]] = job["status"]
        assert set(jobs) <= set(status), (set(jobs) - set(status), seed)  # none was lost
        return all(status[j] in ("completed", "failed", "cancelled") for j in jobs)
    wait_for(all_final, timeout=60, what=f"every job reaches a final state (seed {seed})")
