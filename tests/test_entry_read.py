"""ABI v2: ``entry_read`` (file bytes straight into guest memory), the ABI version a module
declares, ``query:entries.content_hash.v1``, and size pages that cost the same at any depth.

The guest side is the Rust SDK's ``Library::read_into`` in test-extension's ``read_file``
job (a copy whose manifest grants the read), and WAT modules for what an SDK never does.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import wasmtime
from conftest import BUILT_EXTENSIONS, Daemon
from fstree import UnprivilegedDaemon, unlock, write
from wasm_guests import make_extension, module

from daemon.libraries.schema import MIGRATIONS
from daemon.locations import store

TEST_EXT = BUILT_EXTENSIONS / "test-extension"
READ_IMPORT = ('(import "spacedrive" "entry_read" '
               '(func $read (param i32 i64 i64 i32 i32) (result i64)))')


@pytest.fixture
def d(tmpdir_short: Path, spawn: Callable[..., Daemon]) -> Iterator[Daemon]:
    yield spawn(socket_path=tmpdir_short / "sd.sock", cls=UnprivilegedDaemon).start()
    unlock(tmpdir_short)


def granted_copy(dest: Path, ext_id: str, methods: list[str]) -> Path:
    """test-extension under another id, with these methods and a rate that never binds."""
    d = dest / ext_id
    shutil.copytree(TEST_EXT, d)
    m = json.loads((d / "manifest.json").read_text())
    m["id"] = ext_id
    m["permissions"]["methods"] = methods
    m["permissions"]["rate_limits"]["requests_per_minute"] = 600_000
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def fnv(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def read_job(d: Daemon, lib: str, ext: str, state: dict[str, Any]) -> dict[str, Any]:
    r = d.sd("--json", "job", "run", ext, "read_file", "--state", json.dumps(state), "--wait",
             "--library", lib, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["status"] == "completed", info
    return info["output"]  # type: ignore[no-any-return]


def setup_location(d: Daemon, tree: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("location", "add", str(tree), "--no-watch", "--wait", check=True)  # a stale index
    return lib, {e["path"]: e for e in d.sd_json("entries", "ls", "--limit", "0")}


def test_entry_read_bytes_bounds_symlinks_and_grant(d: Daemon, tmpdir_short: Path) -> None:
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    tree = tmpdir_short / "tree"
    write(tree / "big.bin", data)
    write(tree / "dir" / "inner.txt", b"inner bytes")
    write(tmpdir_short / "outside" / "secret.txt", b"secret outside the location")
    lib, ents = setup_location(d, tree)
    reader = granted_copy(tmpdir_short / "src", "reader", ["query:test.", "query:entries.read.v1"])
    d.sd("ext", "install", str(reader), check=True)
    big = ents["big.bin"]["id"]

    # Every byte, through an odd-sized buffer: exactly the file.
    out = read_job(d, lib, "reader", {"entry_id": big, "buffer": 65_543, "checksum": True})
    assert out["error"] is None and out["bytes"] == len(data) and out["fnv"] == fnv(data)
    # A range running past the end stops at it; one starting past it reads nothing.
    out = read_job(d, lib, "reader", {"entry_id": big, "offset": len(data) - 5, "checksum": True})
    assert (out["bytes"], out["fnv"], out["error"]) == (5, fnv(data[-5:]), None)
    out = read_job(d, lib, "reader", {"entry_id": big, "offset": len(data) + 10})
    assert (out["bytes"], out["calls"], out["error"]) == (0, 1, None)
    # Not a file; no such entry.
    out = read_job(d, lib, "reader", {"entry_id": ents["dir"]["id"]})
    assert out["error"] == -32007 and out["bytes"] == 0
    out = read_job(d, lib, "reader", {"entry_id": 999_999})
    assert out["error"] == -32006

    # A symlink swapped in for the file, then for a directory on its path: never followed.
    inner = ents["dir/inner.txt"]["id"]
    assert read_job(d, lib, "reader", {"entry_id": inner})["bytes"] == len(b"inner bytes")
    (tree / "big.bin").unlink()
    os.symlink(tmpdir_short / "outside" / "secret.txt", tree / "big.bin")
    out = read_job(d, lib, "reader", {"entry_id": big})
    assert out["error"] == -32007 and out["bytes"] == 0
    os.rename(tree / "dir", tree / "dir-moved")
    os.symlink(tmpdir_short / "outside", tree / "dir")
    (tmpdir_short / "outside" / "inner.txt").write_bytes(b"not the indexed file")
    out = read_job(d, lib, "reader", {"entry_id": inner})
    assert out["error"] == -32007 and out["bytes"] == 0

    # Without the exact grant (a prefix is not one) every read is refused.
    prefix = granted_copy(tmpdir_short / "src", "prefix-reader", ["query:test.", "query:entries."])
    d.sd("ext", "install", str(prefix), check=True)
    out = read_job(d, lib, "prefix-reader", {"entry_id": inner})
    assert out["error"] == -32003 and "exact name" in out["error_message"]
    d.sd("ext", "install", str(TEST_EXT), check=True)  # its manifest grants no file access
    out = read_job(d, lib, "test-extension", {"entry_id": inner})
    assert out["error"] == -32003
    assert d.sd_json("status")  # the daemon still serves


@pytest.mark.parametrize(("ptr", "length", "message"), [
    (131_072 - 10, 100, "out of bounds"),     # runs off the end of memory (2 pages)
    (131_072, 1, "out of bounds"),            # starts at the end
    (-8, 16, "out of bounds"),                # a negative pointer
    (1024, -5, "negative buffer length"),
    (0x7FFF_FFF0, 0x7FFF_FFF0, "out of bounds"),  # ptr + len overflows i32
])
def test_entry_read_buffer_out_of_bounds_traps(daemon: Daemon, tmpdir_short: Path, ptr: int,
                                               length: int, message: str) -> None:
    wat = module(f"""
      (func (export "plugin_init") (result i32)
        (drop (call $read (i32.const 0) (i64.const 1) (i64.const 0)
                          (i32.const {ptr}) (i32.const {length})))
        (i32.const 0))
    """, (READ_IMPORT,))
    src = make_extension(tmpdir_short / "src", "oob", wat)
    r = daemon.sd("ext", "install", str(src))
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert daemon.sd_json("status")


def test_entry_read_without_library_returns_an_error_code(daemon: Daemon,
                                                          tmpdir_short: Path) -> None:
    # A valid buffer and no library: not a trap, the code of LibraryRequired.
    wat = module("""
      (func (export "plugin_init") (result i32)
        (if (i64.ne (call $read (i32.const 0) (i64.const 1) (i64.const 0)
                                (i32.const 1024) (i32.const 64)) (i64.const -32001))
          (then unreachable))
        (i32.const 0))
    """, (READ_IMPORT,))
    src = make_extension(tmpdir_short / "src", "nolib", wat)
    daemon.sd("ext", "install", str(src), check=True)


def custom_section(name: str, payload: bytes) -> bytes:
    body = bytes([len(name)]) + name.encode() + payload
    assert len(body) < 128
    return bytes([0, len(body)]) + body


@pytest.mark.parametrize(("declared", "ok"), [(None, True), (b"\x01", True), (b"\x02", True),
                                              (b"\x01\x02", True), (b"\x03", False),
                                              (b"\x02\x07", False), (b"", False)])
def test_a_module_declares_the_abi_version_it_needs(daemon: Daemon, tmpdir_short: Path,
                                                    declared: bytes | None, ok: bool) -> None:
    wat = module('(func (export "plugin_init") (result i32) (i32.const 0))')
    src = make_extension(tmpdir_short / "src", "versioned", wat)
    wasm = wasmtime.wat2wasm(wat)
    if declared is not None:
        wasm += custom_section("spacedrive_abi", declared)
    (src / "versioned.wasm").write_bytes(wasm)
    r = daemon.sd("ext", "install", str(src))
    if ok:
        assert r.returncode == 0, r.stderr
        assert daemon.sd_json("ext", "info", "versioned")["state"] == "loaded"
    else:
        assert r.returncode != 0
        if declared:
            need = max(declared)
            assert (f"module needs ABI version {need} (custom section spacedrive_abi); "
                    f"this sd implements versions 1 to 2: upgrade sd to load it") in r.stderr
        else:
            assert "custom section spacedrive_abi is empty" in r.stderr


def test_content_hash_whole_file_cached_and_per_entry_errors(d: Daemon, tmpdir_short: Path) -> None:
    rnd = random.Random(2)
    big = rnd.randbytes(5 * 1024 * 1024 + 3)  # hashed in blocks, on blake3's threads
    tree = tmpdir_short / "tree"
    write(tree / "big", big)
    write(tree / "small", b"small")
    os.link(tree / "big", tree / "big-link")
    write(tree / "d" / "x", b"x")
    write(tree / "locked", b"nobody reads me").chmod(0)
    write(tree / "gone", b"soon gone")
    os.symlink("small", tree / "link")
    lib, ents = setup_location(d, tree)
    (tree / "gone").unlink()
    ids = [ents[p]["id"] for p in ("big", "small", "big-link", "d", "locked", "gone", "link")]

    def call(entry_ids: list[int]) -> Any:
        r = d.rpc("query:entries.content_hash.v1", {"entry_ids": entry_ids}, lib)
        assert "result" in r, r
        return r["result"]

    first = call(ids)
    h = {ents_path: x for ents_path, x in zip(
        ("big", "small", "big-link", "d", "locked", "gone", "link"), first["hashes"], strict=True)}
    assert h["big"]["hash"] == blake3.blake3(big).hexdigest() and not h["big"]["cached"]
    assert h["small"]["hash"] == blake3.blake3(b"small").hexdigest()
    assert h["big-link"]["hash"] == h["big"]["hash"] and h["big-link"]["cached"]  # one inode
    assert h["big-link"]["inode"] == h["big"]["inode"]
    assert first["bytes_read"] == len(big) + len(b"small")
    assert h["d"]["error"]["code"] == -32007 and "not a file" in h["d"]["error"]["message"]
    assert "Permission denied" in h["locked"]["error"]["message"]
    assert h["gone"]["error"]["code"] == -32006
    assert "symlink, not a file" in h["link"]["error"]["message"]

    again = call(ids[:3])
    assert again["bytes_read"] == 0 and all(x["cached"] for x in again["hashes"])
    # Changed since indexing (same size, new mtime): refused until a rescan, then hashed anew.
    (tree / "small").write_bytes(b"SMALL")
    changed = call([ents["small"]["id"]])["hashes"][0]
    assert changed["hash"] is None and "changed since it was indexed" in changed["error"]["message"]
    d.sd("location", "rescan", "1", "--wait", check=True)
    fresh = call([ents["small"]["id"]])["hashes"][0]
    assert fresh["hash"] == blake3.blake3(b"SMALL").hexdigest() and not fresh["cached"]

    # A symlink swapped in for an indexed file (uncached, then cached): never followed.
    x = ents["d/x"]["id"]
    assert call([x])["hashes"][0]["hash"] == blake3.blake3(b"x").hexdigest()
    write(tree / "plain", b"plain")
    d.sd("location", "rescan", "1", "--wait", check=True)
    plain = {e["path"]: e["id"] for e in d.sd_json("entries", "ls", "--limit", "0")}["plain"]
    for entry_id, path in ((x, tree / "d" / "x"), (plain, tree / "plain")):
        path.unlink()
        os.symlink(tree / "big", path)
        swapped = call([entry_id])["hashes"][0]
        assert swapped["hash"] is None and "symbolic link" in swapped["error"]["message"]

    r = d.rpc("query:entries.content_hash.v1", {"entry_ids": list(range(1, 1002))}, lib)
    assert r["error"]["code"] == -32602
    out = d.sd_json("call", "query:entries.content_hash.v1",
                    json.dumps({"entry_ids": [ents["big"]["id"]]}), "-l", lib)
    assert out["hashes"][0]["cached"] and out["bytes_read"] == 0
    human = d.sd("entries", "hash", str(ents["big"]["id"]), str(ents["d"]["id"]),
                 "--library", lib, check=True).stdout
    assert f"{ents['big']['id']}  {h['big']['hash']}  (cached)" in human, human
    assert "d is a dir, not a file" in human and "0 bytes read" in human


def test_size_pages_cost_the_same_at_any_depth() -> None:
    """Keyset pages by size start the index range at the cursor (issue 15): the work of a
    deep page, counted in SQLite VM steps, is that of the first page, not proportional to
    the rows before it."""
    conn = sqlite3.connect(":memory:")
    for m in MIGRATIONS:
        conn.executescript(m)
    conn.execute("INSERT INTO locations (path, name, created_at) VALUES ('/x', 'x', 0)")
    rnd = random.Random(3)
    conn.executemany(
        "INSERT INTO entries (location_id, path, parent, name, extension, kind, size, mtime_ns,"
        " dev, inode) VALUES (1, ?, '', ?, '', ?, ?, 0, 1, ?)",
        [(f"f{i}", f"f{i}", "file" if i % 10 else "dir", rnd.randrange(1, 50_000), i)
         for i in range(60_000)])

    def steps(q: store.EntryQuery) -> tuple[int, str | None]:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0
        conn.set_progress_handler(tick, 100)
        page = store.list_entries(conn, q)
        conn.set_progress_handler(None, 0)
        return count[0], page.next_cursor

    q = store.EntryQuery(location_id=1, kind="file", min_size=1, order="size", limit=1000)
    first, cursor = steps(q)
    deep: list[int] = []
    seen = 0
    while cursor is not None:
        n, cursor = steps(store.EntryQuery(location_id=1, kind="file", min_size=1, order="size",
                                           limit=1000, cursor=cursor))
        deep.append(n)
        seen += 1
    assert seen >= 50
    assert max(deep) < 3 * first + 50, (first, deep)
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN " + store.entries_sql(conn, q)[0], store.entries_sql(conn, q)[1]))
    assert "entries_by_size" in plan
