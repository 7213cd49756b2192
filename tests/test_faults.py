"""Faults are input too (issue 13): half-closed clients, a damaged module cache, a corrupt
library, a full disk, kill -9 during creates, a module file that is not WebAssembly.

Each test runs the real daemon; docs/reliability.md has the table of faults and answers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from conftest import BUILT_EXTENSIONS, Daemon


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


def test_damaged_module_cache_is_rebuilt_not_trusted(tmpdir_short: Path) -> None:
    d = Daemon(tmpdir_short / "data", tmpdir_short / "run" / "sd.sock",
               extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS)]).start()
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
