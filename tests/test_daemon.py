"""The daemon process: start, stop, restart, refusal of a second daemon, socket permissions."""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Callable

from conftest import Daemon


def test_status_and_libraries_survive_restart(daemon: Daemon) -> None:
    st = daemon.sd_json("status")
    assert st["pid"] == daemon.proc.pid
    assert st["data_dir"] == str(daemon.data_dir)
    assert st["libraries"] == 0
    lib = daemon.sd_json("library", "create", "Photos")
    assert lib["name"] == "Photos"
    assert daemon.stop() == 0
    daemon.start()
    libs = daemon.sd_json("library", "list")
    assert [(x["id"], x["name"]) for x in libs] == [(lib["id"], "Photos")]
    assert daemon.sd_json("status")["libraries"] == 1


def test_sigterm_removes_socket_and_exits_zero(daemon: Daemon) -> None:
    assert daemon.socket.exists()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()
    assert "stopped" in daemon.log()


def test_sigint_also_clean(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket.exists()


def test_daemon_stop_command(daemon: Daemon) -> None:
    r = daemon.sd("daemon", "stop")
    assert r.returncode == 0, r.stderr
    assert daemon.proc.wait(20) == 0
    assert not daemon.socket.exists()


def test_second_daemon_on_same_data_dir_refuses(daemon: Daemon, tmpdir_short,
                                                spawn: Callable[..., Daemon]) -> None:
    other = spawn(daemon.data_dir, tmpdir_short / "other.sock")
    other.start(wait=False)
    code = other.proc.wait(20)
    assert code != 0
    assert "in use" in other.log()
    assert daemon.sd("status").returncode == 0


def test_second_daemon_on_same_socket_refuses(daemon: Daemon, tmpdir_short,
                                              spawn: Callable[..., Daemon]) -> None:
    other = spawn(tmpdir_short / "data2", daemon.socket)
    other.start(wait=False)
    assert other.proc.wait(20) != 0
    assert "already serving" in other.log()
    assert daemon.socket.exists()
    assert daemon.sd("status").returncode == 0


def test_stale_socket_is_replaced(tmpdir_short, spawn: Callable[..., Daemon]) -> None:
    sock_path = tmpdir_short / "run" / "sd.sock"
    sock_path.parent.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))  # bound, never listening: what a crash leaves behind
    s.close()
    d = spawn(socket_path=sock_path).start()
    assert d.sd("status").returncode == 0
    assert "stale socket" in d.log()


def test_socket_permissions(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700


def test_kill9_then_restart(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "K")
    daemon.kill9()
    assert daemon.socket.exists()  # left behind by the crash
    daemon.start()
    assert [x["id"] for x in daemon.sd_json("library", "list")] == [lib["id"]]


def test_log_lines_have_level_and_logger(daemon: Daemon) -> None:
    daemon.sd("status")
    line = next(ln for ln in daemon.log().splitlines() if "ready" in ln)
    assert " INFO sd.daemon: " in line


def test_other_uid_is_refused_by_peer_credentials(daemon: Daemon) -> None:
    """Even with the file modes opened up by hand, SO_PEERCRED keeps other users out."""
    import shutil
    import subprocess
    import sys

    if os.getuid() != 0 or shutil.which("setpriv") is None:
        import pytest
        pytest.skip("needs root and setpriv to act as another user")
    os.chmod(daemon.socket.parent.parent, 0o755)  # the mkdtemp dir
    os.chmod(daemon.socket.parent, 0o755)
    os.chmod(daemon.socket, 0o666)
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "print(s.recv(65536).decode())\n")  # the refusal comes before any request
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code, str(daemon.socket)],
                       capture_output=True, text=True, timeout=20)
    assert '"code":-32003' in r.stdout, (r.stdout, r.stderr)
    assert "result" not in r.stdout
    assert "refused connection" in daemon.log() and "uid 65534" in daemon.log()
    assert daemon.sd("status").returncode == 0


def test_shutdown_finishes_in_flight_requests_and_reads_no_new_ones(daemon: Daemon) -> None:
    import json as _json

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(15)
    s.connect(str(daemon.socket))
    s.sendall(b'{"jsonrpc":"2.0","id":"slow","method":"query:test.sleep.v1","params":{"payload":{"seconds":1.0}}}\n'
              b'{"jsonrpc":"2.0","id":"read","method":"query:test.ping.v1"}\n')
    # The ping's answer (out of order, before the slow one) shows both lines were read.
    assert _json.loads(s.makefile("rb").readline())["id"] == "read"
    assert daemon.sd("daemon", "stop").returncode == 0
    daemon.wait_log("shutting down")
    try:
        s.sendall(b'{"jsonrpc":"2.0","id":"late","method":"query:test.ping.v1"}\n')
    except OSError:
        pass
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break  # closed with our unread "late" request in its buffer: a reset, by design
        if not chunk:
            break
        data += chunk
    answers = [_json.loads(line) for line in data.splitlines()]
    assert [a["id"] for a in answers] == ["slow"] and answers[0]["result"] == {"slept": 1.0}
    assert daemon.proc.wait(20) == 0
