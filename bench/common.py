"""Shared helpers: temp dirs, statistics, the daemon subprocess, resident memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUILT_EXTENSIONS = ROOT / "build" / "extensions"

PING = "query:test.ping.v1"
# The ping payload every row sends: padded with JSON whitespace to 24 bytes so the
# Extism guest can store it in whole u64 words; every guest sends the same bytes.
PING_PAYLOAD = b'{"from":"bench","n":1}  '
assert len(PING_PAYLOAD) % 8 == 0


@contextmanager
def short_tmpdir(prefix: str = "sdb-") -> Iterator[Path]:
    """A temp dir with a short path (Unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MiB (``/proc`` reports KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {path} after {timeout}s")


class Server:
    """A server subprocess (the daemon or the echo baseline) on a Unix socket."""

    def __init__(self, cmd: list[str], socket_path: Path, log_path: Path) -> None:
        self.cmd = cmd
        self.socket = socket_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT)
        try:
            wait_for_socket(self.socket, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def daemon(tmp: Path, name: str = "daemon", *, module: str | None = None,
           bundled: Path | None = BUILT_EXTENSIONS) -> Server:
    """The real ``sd-daemon`` (or ``python -m <module>``, same CLI) on a fresh data dir."""
    sock = tmp / f"{name}.sock"
    cmd = [str(BIN / "sd-daemon")] if module is None else [sys.executable, "-m", module]
    cmd += ["--data-dir", str(tmp / f"{name}-data"), "--socket", str(sock)]
    if bundled is not None:
        cmd += ["--bundled-extensions", str(bundled)]
    return Server(cmd, sock, tmp / f"{name}.log")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def rpc(path: Path, method: str, payload: Any = None, library_id: str | None = None,
        timeout: float = 30.0) -> Any:
    """One JSON-RPC call on a fresh connection; returns the result or raises on an error."""
    req = {"jsonrpc": "2.0", "id": 1, "method": method,
           "params": {"library_id": library_id, "payload": payload or {}}}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise RuntimeError(f"{method}: connection closed")
            buf += chunk
    answer = json.loads(buf.split(b"\n", 1)[0])
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]
