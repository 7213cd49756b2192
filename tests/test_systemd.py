"""Running as a systemd service, without systemd running: the real daemon under
``systemd-socket-activate``, a real ``$NOTIFY_SOCKET``, journald stream prefixes,
group access through the socket, and ``systemd-analyze`` on the unit files.

The tools come from Debian's systemd package (scripts/ensure-test-tools.sh).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, ROOT, Daemon, raw_exchange, wait_for

JOBS_DAEMON = [sys.executable, str(ROOT / "tests" / "jobs_daemon.py")]
STATUS_REQ = b'{"jsonrpc":"2.0","id":1,"method":"query:core.status.v1"}\n'


class Notifications:
    """A real sd_notify receiver: a datagram socket that records who sent what, when."""

    def __init__(self, address: str) -> None:
        self.address = address  # as put in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        # systemd learns the sender's pid the same way (NotifyAccess=main).
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[float, int, dict[str, str]]] = []

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return False
        pid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        self.messages.append((time.monotonic(), pid, fields))
        return True

    def wait(self, pred: Callable[[dict[str, str]], bool], timeout: float = 20.0
             ) -> dict[str, str]:
        """The first message so far or from now on that satisfies ``pred``."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for _, _, fields in self.messages[seen:]:
                if pred(fields):
                    return fields
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no such notification; got {self.messages}")
            self._receive(deadline - time.monotonic())

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def times_of(self, key: str) -> list[float]:
        return [t for t, _, f in self.messages if key in f]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tmp(tmpdir_short: Path) -> Path:
    return tmpdir_short


def socket_activate(listen: list[Path], cmd: list[str], env: dict[str, str],
                    log: Path) -> subprocess.Popen[bytes]:
    """``systemd-socket-activate``: it binds, and execs ``cmd`` (same pid) on the first
    connection with ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` set; it passes on
    only the environment given with ``-E``."""
    args = ["systemd-socket-activate", "--fdname=" + ":".join(p.stem for p in listen)]
    args += [f"--listen={p}" for p in listen]
    args += [f"--setenv={k}={v}" for k, v in env.items()]
    with open(log, "ab") as out:
        proc = subprocess.Popen([*args, *cmd], stdout=out, stderr=out)
    def listening() -> bool:
        assert proc.poll() is None, log.read_text()
        return all(p.exists() for p in listen)
    wait_for(listening, 10, lambda: f"the activation sockets:\n{log.read_text()}")
    return proc


def journal_env(log: Path) -> dict[str, str]:
    """``JOURNAL_STREAM`` naming ``log`` as systemd would name the journal's stream."""
    log.touch()
    st = os.stat(log)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def sd(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "sd"), "--socket", str(sock), *args],
                          check=False, capture_output=True, text=True, timeout=30)


def sd_json(sock: Path, *args: str) -> Any:
    r = sd(sock, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# --- socket activation and sd_notify -------------------------------------------------------

def test_socket_activated_daemon_notifies_ready_status_watchdog_stopping(
        tmp: Path, spawn: Callable[..., Daemon]) -> None:
    sock, log = tmp / "sd.sock", tmp / "daemon.log"
    notes = Notifications(str(tmp / "notify"))
    proc = socket_activate(
        [sock],
        [*JOBS_DAEMON, "--data-dir", str(tmp / "data"), "--socket", str(tmp / "own.sock")],
        {"NOTIFY_SOCKET": notes.address, "WATCHDOG_USEC": "400000"}, log)
    try:
        # This first connection is what makes systemd-socket-activate exec the daemon; it
        # waits in the inherited socket's backlog until the daemon serves it.
        assert b'"libraries":0' in raw_exchange(sock, STATUS_REQ)

        ready = notes.wait(lambda f: "READY" in f)
        assert ready == {"READY": "1", "STATUS": "0 libraries, 0 jobs running, 0 extensions"}
        assert {pid for _, pid, _ in notes.messages} == {proc.pid}  # sent by the main pid
        assert "serving socket 'sd' passed by systemd (fd 3)" in log.read_text()
        assert not (tmp / "own.sock").exists()  # it did not bind a socket of its own

        # The CLI works through the activated socket; STATUS follows the Core.
        lib = sd_json(sock, "library", "create", "Photos")["id"]
        notes.wait(lambda f: f.get("STATUS", "").startswith("1 libraries, 0 jobs running"))
        sd_json(sock, "job", "dispatch", "test.steps", "-l", lib,
                "--input", '{"count": 100, "delay": 0.05}')
        notes.wait(lambda f: f.get("STATUS", "").startswith("1 libraries, 1 jobs running"))

        # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.2 s.
        notes.collect(1.2)
        pings = notes.times_of("WATCHDOG")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        recent = [g for g, t in zip(gaps, pings[1:], strict=False) if t > pings[-1] - 1.2]
        assert len(recent) >= 4, pings
        assert all(0.15 < g < 0.35 for g in recent), recent

        proc.send_signal(signal.SIGTERM)
        stopping = notes.wait(lambda f: "STOPPING" in f)
        assert stopping["STOPPING"] == "1"
        assert proc.wait(20) == 0
        # The daemon does not own the activated socket: it leaves the file to systemd.
        assert stat.S_ISSOCK(sock.lstat().st_mode)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notes.close()
    # The stop paused the running job at a checkpoint (it did not fail): it goes on after.
    restarted = spawn(socket_path=tmp / "again.sock").start()
    jobs = sd_json(restarted.socket, "job", "list", "-l", lib)
    assert isinstance(jobs, list) and len(jobs) == 1, jobs
    assert jobs[0]["status"] in ("paused", "queued", "running", "completed"), jobs


def test_abstract_notify_socket_foreign_listen_and_watchdog_pids(
        spawn: Callable[..., Daemon]) -> None:
    """``@name`` is the abstract namespace; LISTEN_*/WATCHDOG_* meant for another pid are
    ignored (the daemon binds its own socket, as without systemd, and does not ping)."""
    notes = Notifications(f"@sd-test-{uuid.uuid4().hex}")
    d = spawn(env={
        "NOTIFY_SOCKET": notes.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "sd"})
    try:
        d.start()
        assert notes.wait(lambda f: "READY" in f)["READY"] == "1"
        assert d.proc is not None
        assert {pid for _, pid, _ in notes.messages} == {d.proc.pid}
        assert d.sd_json("status")["libraries"] == 0
        assert stat.S_IMODE(d.socket.stat().st_mode) == 0o600
        notes.collect(0.6)
        assert notes.times_of("WATCHDOG") == []
        assert d.stop() == 0
        notes.wait(lambda f: f.get("STOPPING") == "1", timeout=1)
        assert not d.socket.exists()  # its own socket: removed on stop, as before
    finally:
        notes.close()


def test_watchdog_pings_come_from_the_event_loop(tmp: Path) -> None:
    """A wedged event loop stops the pings, so systemd's watchdog catches it."""
    notes = Notifications(str(tmp / "notify"))
    code = textwrap.dedent("""
        import asyncio, time, uvloop
        from daemon import systemd

        async def main():
            n = systemd.Notifier.from_env()
            task = asyncio.ensure_future(systemd.watchdog(n, systemd.watchdog_interval()))
            await asyncio.sleep(0.5)
            n.notify("STATUS=wedged")
            time.sleep(1.0)  # blocks the loop
            n.notify("STATUS=unwedged")
            await asyncio.sleep(0.5)
            task.cancel()

        uvloop.run(main())
        """)
    env = {**os.environ, "NOTIFY_SOCKET": notes.address, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    try:
        notes.wait(lambda f: f.get("STATUS") == "unwedged", timeout=15)
        notes.collect(0.5)
        assert proc.wait(10) == 0
    finally:
        notes.close()
    pings = notes.times_of("WATCHDOG")
    wedged = next(t for t, _, f in notes.messages if f.get("STATUS") == "wedged")
    before = [t for t in pings if t < wedged]
    gaps = [b - a for a, b in itertools.pairwise(before)]
    assert len(before) >= 4 and all(g < 0.2 for g in gaps), gaps
    assert max(b - a for a, b in itertools.pairwise(pings)) >= 0.9  # none while wedged
    assert len([t for t in pings if t > wedged + 1.0]) >= 3  # and back after


# --- journald -----------------------------------------------------------------------------

PRIORITY_LINE = re.compile(r"^<([0-7])>(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def test_journal_stream_gets_priority_prefixes_not_timestamps(tmp: Path) -> None:
    log = tmp / "journal.log"
    extra = tmp / "extra.sock"
    proc = socket_activate(
        [tmp / "sd.sock", extra],
        [str(BIN / "sd-daemon"), "--data-dir", str(tmp / "data"), "--log-level", "debug"],
        # A notify socket that is not there: logged at debug level, not fatal.
        {**journal_env(log), "NOTIFY_SOCKET": str(tmp / "missing")}, log)
    try:
        assert b'"result"' in raw_exchange(tmp / "sd.sock", STATUS_REQ)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A second daemon refused (error), with the same stream as its stderr.
    with open(log, "ab") as out:
        busy = socket.socket(socket.AF_UNIX)
        busy.bind(str(tmp / "busy.sock"))
        busy.listen()
        r = subprocess.run([str(BIN / "sd-daemon"), "--data-dir", str(tmp / "data2"),
                            "--socket", str(tmp / "busy.sock")],
                           stdout=out, stderr=out, env={**os.environ, **journal_env(log)},
                           check=False, timeout=30)
        busy.close()
    assert r.returncode == 1

    daemon_lines = [ln for ln in log.read_text().splitlines() if ln.startswith("<")]
    by_prio: dict[str, list[str]] = {}
    for line in daemon_lines:
        m = PRIORITY_LINE.match(line)
        assert m, line
        by_prio.setdefault(m.group(1), []).append(line)
    assert any("sd_notify" in ln and "failed" in ln for ln in by_prio["7"])
    assert any("ready" in ln for ln in by_prio["6"])
    assert any("closing unexpected socket 'extra'" in ln for ln in by_prio["4"])
    assert any("already serving" in ln for ln in by_prio["3"])
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", "\n".join(daemon_lines))


def test_journal_prefix_on_every_traceback_line_and_only_for_the_journal(tmp: Path) -> None:
    code = textwrap.dedent("""
        import logging
        from daemon.logging_setup import setup_logging
        setup_logging("debug")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("sd.test").exception("it broke")
        logging.getLogger("sd.test").warning("careful")
        """)
    log, other = tmp / "journal.log", tmp / "other.log"
    for env in (journal_env(log), journal_env(other)):
        with open(log, "ab") as out:
            subprocess.run([sys.executable, "-c", code], stderr=out, cwd=ROOT, check=True,
                           env={**os.environ, **env}, timeout=30)
    journal, plain = log.read_text().split("<4>WARNING sd.test: careful\n")
    lines = journal.splitlines()
    assert lines[0] == "<3>ERROR sd.test: it broke"
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"
    assert len(lines) > 3 and all(ln.startswith("<3>") for ln in lines)
    # JOURNAL_STREAM naming some other file: stderr is not the journal.
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ERROR sd.test: it broke\n", plain)
    assert not re.search(r"^<\d>", plain, re.MULTILINE)


# --- group access -------------------------------------------------------------------------

def as_user(uid: int, gid: int, groups: list[int], sock: Path
            ) -> subprocess.CompletedProcess[str]:
    """Connect as another user, read the greeting if any, ask for the status."""
    code = textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sys.argv[1])
        except OSError as e:
            sys.exit(f"connect: {e.strerror}")
        s.settimeout(10)
        try:
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"query:core.status.v1"}\\n')
        except BrokenPipeError:
            pass  # refused: the error line is already waiting
        print(s.recv(65536).decode())
        """)
    grp_args = ["--clear-groups"] if not groups else ["--groups=" + ",".join(map(str, groups))]
    # The client needs only the standard library; the venv's interpreter may live
    # somewhere another user cannot reach (e.g. pyenv under /root).
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *grp_args,
                           python, "-c", code, str(sock)],
                          check=False, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.getuid() != 0, reason="acting as other users needs root (CI runs as root)")
def test_socket_group_members_may_connect_others_may_not(
        tmp: Path, spawn: Callable[..., Daemon]) -> None:
    group, nobody = 4242, 65534
    os.chmod(tmp, 0o711)
    d = spawn(extra_args=["--socket-group", str(group)]).start()
    st, dst = d.socket.stat(), d.socket.parent.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, group)
    assert (stat.S_IMODE(dst.st_mode), dst.st_gid) == (0o750, group)

    primary = as_user(nobody, group, [], d.socket)
    assert '"result"' in primary.stdout, primary
    supplementary = as_user(nobody, nobody, [group], d.socket)
    assert '"result"' in supplementary.stdout, supplementary  # SO_PEERGROUPS

    outsider = as_user(nobody, nobody, [], d.socket)
    assert "connect: Permission denied" in outsider.stderr, outsider
    # With the file modes opened by hand, the peer-credential check still refuses.
    os.chmod(d.socket.parent, 0o755)
    os.chmod(d.socket, 0o666)
    outsider = as_user(nobody, nobody, [], d.socket)
    assert '"code":-32003' in outsider.stdout and '"result"' not in outsider.stdout
    assert re.search(f"refused connection from pid \\d+ uid {nobody} gid {nobody}", d.log())
    assert d.stop() == 0


def test_unknown_socket_group_is_refused_up_front(tmp: Path) -> None:
    r = subprocess.run([str(BIN / "sd-daemon"), "--data-dir", str(tmp / "data"),
                        "--socket", str(tmp / "sd.sock"), "--socket-group", "no-such-group-sd"],
                       check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "no group 'no-such-group-sd'" in r.stderr
    assert not (tmp / "sd.sock").exists()


# --- unit files ---------------------------------------------------------------------------

@pytest.fixture
def rendered_units(tmp: Path) -> Path:
    """The units as ``make install-service`` renders them, for a prefix that exists here
    (``systemd-analyze verify`` checks that ExecStart= is executable)."""
    prefix = tmp / "prefix"
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "sd-daemon").symlink_to(BIN / "sd-daemon")
    subprocess.run(["bash", str(ROOT / "systemd" / "install.sh"), "render", str(tmp / "units")],
                   env={**os.environ, "PREFIX": str(prefix)}, check=True, timeout=30)
    return tmp / "units"


def test_systemd_analyze_verify_passes(rendered_units: Path, tmp: Path) -> None:
    system = rendered_units / "system"
    r = subprocess.run(["systemd-analyze", "verify", str(system / "sd.socket"),
                        str(system / "sd.service")],
                       check=False, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    user = rendered_units / "user"
    runtime = tmp / "xdg"
    runtime.mkdir(mode=0o700)
    r = subprocess.run(["systemd-analyze", "--user", "verify", str(user / "sd.socket"),
                        str(user / "sd.service")],
                       check=False, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # Only the install prefix differs from the committed units.
    committed = (ROOT / "systemd" / "sd.service").read_text()
    assert (system / "sd.service").read_text() == committed.replace(
        "/opt/sd", str(tmp / "prefix"))


def test_hardening_is_in_the_unit_and_the_documented_score_holds(rendered_units: Path) -> None:
    unit = (ROOT / "systemd" / "sd.service").read_text()
    settings = {ln for ln in unit.splitlines() if ln and not ln.startswith("#")}
    for wanted in ("Type=notify", "WatchdogSec=30s", "StateDirectory=sd", "RuntimeDirectory=sd",
                   "User=sd", "ProtectSystem=strict", "ProtectHome=read-only", "PrivateTmp=yes",
                   "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX",
                   "SystemCallFilter=@system-service"):
        assert wanted in settings, wanted
    assert not any(s.startswith("MemoryDenyWriteExecute=") for s in settings)  # the JIT
    socket_unit = (ROOT / "systemd" / "sd.socket").read_text()
    for wanted in ("ListenStream=/run/sd/sd.sock", "SocketGroup=sd", "SocketMode=0660"):
        assert wanted in socket_unit.splitlines(), wanted
    assert "--socket-group sd" in unit

    documented = exposure((ROOT / "docs" / "service.md").read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                        f"--threshold={round(documented * 10)}", "sd.service"],
                       cwd=rendered_units / "system", check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and exposure(r.stdout) <= documented, r.stdout


def exposure(text: str) -> float:
    """The score in ``systemd-analyze security`` output (0 best, 10 worst)."""
    m = re.search(r"Overall exposure level for sd\.service: ([\d.]+)", text)
    assert m, text
    return float(m[1])
