"""Shared fixtures: a real daemon subprocess on a temp data dir and socket."""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import open_app
from daemon.config import DaemonConfig
from daemon.core import Core

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUILT_EXTENSIONS = ROOT / "build" / "extensions"
sys.path.insert(0, str(Path(__file__).parent))


class _Deadline:
    """The one polling rule of the tests: check, wait a little, fail clearly at the deadline."""

    def __init__(self, timeout: float, what: str | Callable[[], str] | None,
                 cond: Callable[[], Any]) -> None:
        self.end = time.monotonic() + timeout
        self.timeout = timeout
        self.what = what if what is not None else getattr(cond, "__name__", repr(cond))

    def check(self, last: object) -> None:
        if time.monotonic() > self.end:
            what = self.what() if callable(self.what) else self.what
            raise AssertionError(f"timed out after {self.timeout}s waiting for {what}; "
                                 f"last value: {last!r}")


def wait_for(cond: Callable[[], Any], timeout: float = 30.0,
             what: str | Callable[[], str] | None = None, every: float = 0.02) -> Any:
    """Poll ``cond()`` until it returns something truthy, and return that. After ``timeout``
    seconds fail with ``what`` (a text, or a function giving it then; default: the
    condition's name) and the last value."""
    deadline = _Deadline(timeout, what, cond)
    while not (value := cond()):
        deadline.check(value)
        time.sleep(every)
    return value


async def wait_for_async(cond: Callable[[], Any], timeout: float = 30.0,
                         what: str | Callable[[], str] | None = None, every: float = 0.01) -> Any:
    """``wait_for`` on the event loop: ``cond`` may return an awaitable."""
    deadline = _Deadline(timeout, what, cond)
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check(value)
        await asyncio.sleep(every)


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    """A Core opened in this process on a fresh data dir, without extensions (test modules
    that need another kind define their own ``core``)."""
    data = tmp_path / "data"
    c = (await open_app(data, DaemonConfig(data_dir=data, socket_path=data / "s.sock"),
                        load_extensions=False)).core
    yield c
    await c.shutdown()


def short_tmpdir() -> Path:
    """A temp dir with a short path: Unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))


class Daemon:
    """A real ``sd-daemon`` process (or the tests' variant with test job types)."""

    preexec: Callable[[], None] | None = None  # run in the child before exec

    def __init__(self, data_dir: Path, socket_path: Path, *, test_jobs: bool = True,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.socket = socket_path
        self.test_jobs = test_jobs
        self.extra_args = extra_args or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    def start(self, wait: bool = True) -> Daemon:
        if self.test_jobs:
            cmd = [sys.executable, str(ROOT / "tests" / "jobs_daemon.py")]
        else:
            cmd = [str(BIN / "sd-daemon")]
        cmd += ["--data-dir", str(self.data_dir), "--socket", str(self.socket),
                "--log-level", "debug", *self.extra_args]
        env = {**os.environ, **(self.env or {})}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=self.preexec)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def accepts() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                return True
            except OSError:
                return False
        wait_for(accepts, timeout, lambda: f"the daemon to accept connections:\n{self.log()}",
                 every=0.05)

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        """Wait until the daemon's log contains ``text``."""
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the daemon's log")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def sd(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``sd`` CLI against this daemon."""
        r = subprocess.run([str(BIN / "sd"), "--socket", str(self.socket), *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"sd {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def sd_json(self, *args: str) -> Any:
        return json.loads(self.sd("--json", *args, check=True).stdout)

    def watch_job(self, job_id: str, library: str | None = None, timeout: float = 120) -> Any:
        """``sd --json job watch``: wait for the job to end; it must complete. Returns its info."""
        lib = ["--library", library] if library else []
        r = self.sd("--json", "job", "watch", job_id, *lib, timeout=timeout)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    def rpc(self, method: str, payload: Any = None, library_id: str | None = None) -> Any:
        """One raw JSON-RPC call over the socket; returns the whole response object."""
        req = {"jsonrpc": "2.0", "id": 1, "method": method,
               "params": {"library_id": library_id, "payload": payload or {}}}
        return json.loads(raw_exchange(self.socket, json.dumps(req).encode() + b"\n"))


def raw_exchange(path: Path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes, return the first response line."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.split(b"\n", 1)[0]


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def spawn(tmpdir_short: Path) -> Iterator[Callable[..., Daemon]]:
    """Makes daemons, not yet started: ``spawn(data_dir, socket_path, cls=Daemon, **options)``
    (by default ``tmpdir_short``'s data/ and run/sd.sock). Any still running at teardown
    is stopped; one that does not stop in time is killed and fails the test."""
    made: list[Daemon] = []

    def make(data_dir: Path | None = None, socket_path: Path | None = None, *,
             cls: type[Daemon] = Daemon, **options: Any) -> Daemon:
        made.append(cls(data_dir or tmpdir_short / "data",
                        socket_path or tmpdir_short / "run" / "sd.sock", **options))
        return made[-1]
    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            try:
                d.stop()
            except subprocess.TimeoutExpired:
                d.kill9()
                raise


@pytest.fixture
def daemon(spawn: Callable[..., Daemon]) -> Daemon:
    return spawn().start()


@pytest.fixture
def ext_daemon(spawn: Callable[..., Daemon]) -> Daemon:
    """A daemon that installs and loads the extensions ``make extensions`` built."""
    return spawn(extra_args=["--bundled-extensions", str(BUILT_EXTENSIONS)]).start()


@pytest.fixture
def small_disk(tmpdir_short: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (needs root, as in CI)."""
    mnt = tmpdir_short / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write until ENOSPC, in smaller and smaller pieces, so no page is left."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
