"""The ``sd`` CLI against a real daemon: every command, human and --json output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import BIN, Daemon


def test_library_commands(daemon: Daemon) -> None:
    r = daemon.sd("library", "list", check=True)
    assert "no libraries" in r.stdout
    r = daemon.sd("library", "create", "Work", check=True)
    assert "created library" in r.stdout and "Work" in r.stdout
    lib_id = daemon.sd_json("library", "list")[0]["id"]
    r = daemon.sd("library", "list", check=True)
    assert lib_id in r.stdout and "Work" in r.stdout
    info = daemon.sd_json("library", "info", lib_id)
    assert info["id"] == lib_id and info["name"] == "Work"
    assert Path(info["path"], "library.db").exists()
    r = daemon.sd("library", "delete", lib_id, check=True)
    assert f"deleted library {lib_id}" in r.stdout
    assert daemon.sd_json("library", "list") == []
    assert not Path(info["path"]).exists()
    r = daemon.sd("library", "info", lib_id)
    assert r.returncode == 1 and "no library" in r.stderr


def test_status_human(daemon: Daemon) -> None:
    r = daemon.sd("status", check=True)
    assert "version" in r.stdout and "uptime_s" in r.stdout


def test_call(daemon: Daemon) -> None:
    r = daemon.sd("call", "query:test.ping.v1", '{"x": [1, 2]}', check=True)
    assert json.loads(r.stdout) == {"echo": {"x": [1, 2]}}
    r = daemon.sd("call", "query:no.such.v1")
    assert r.returncode == 1 and "unknown method" in r.stderr
    r = daemon.sd("call", "query:test.ping.v1", "{not json")
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    r = daemon.sd("call", "query:jobs.list.v1")
    assert r.returncode == 1 and "needs a library id" in r.stderr
    r = daemon.sd("call", "query:jobs.list.v1", "--library", "00000000-0000-0000-0000-000000000000")
    assert r.returncode == 1 and "no library" in r.stderr


def test_usage_error_exit_code(daemon: Daemon) -> None:
    assert daemon.sd("library", "create").returncode == 2
    assert daemon.sd("frobnicate").returncode == 2


def test_no_daemon_is_one_clear_line(tmpdir_short) -> None:
    sock = tmpdir_short / "nobody.sock"
    r = subprocess.run([str(BIN / "sd"), "--socket", str(sock), "status"],
                       capture_output=True, text=True)
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(sock) in lines[0] and "sd-daemon" in lines[0]


def test_sync_client_for_scripts(daemon: Daemon) -> None:
    code = (
        "from rpc.client import SyncClient\n"
        f"with SyncClient({str(daemon.socket)!r}) as c:\n"
        "    print(c.call('query:test.ping.v1', {'n': 5})['echo']['n'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "5", r.stderr


# Every command the CLI offers; a command added or lost shows up here.
COMMANDS = """
sd call
sd daemon stop
sd entries get
sd entries ls
sd entries read
sd events
sd ext info
sd ext install
sd ext list
sd ext load
sd ext reload
sd ext storage
sd ext unload
sd job cancel
sd job dispatch
sd job info
sd job list
sd job pause
sd job resume
sd job run
sd job watch
sd library create
sd library delete
sd library info
sd library list
sd location add
sd location identify
sd location list
sd location remove
sd location rescan
sd status
sd tag apply
sd tag create
sd tag delete
sd tag list
sd tag ls
sd tag remove
"""


def help_commands(*path: str) -> list[str]:
    """The command names that ``sd PATH --help`` lists, as a person reads them."""
    r = subprocess.run([str(BIN / "sd"), *path, "--help"], capture_output=True, text=True,
                       timeout=30, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    if "\nCommands:\n" not in r.stdout:
        return []  # a command, not a group
    lines = r.stdout.split("\nCommands:\n", 1)[1].splitlines()
    return [line.split()[0] for line in lines if line.startswith("  ") and line.split()]


def test_help_lists_every_command() -> None:
    listed: list[str] = []
    for name in help_commands():
        listed += [f"sd {name} {sub}" for sub in help_commands(name)] or [f"sd {name}"]
    assert sorted(listed) == COMMANDS.strip().splitlines()
