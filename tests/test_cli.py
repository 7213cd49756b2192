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
    assert r.returncode == 1 and "works in a library" in r.stderr and "-l/--library" in r.stderr
    r = daemon.sd("call", "query:jobs.list.v1", "--library", "00000000-0000-0000-0000-000000000000")
    assert r.returncode == 1 and "no library" in r.stderr
    # With one library, a library-scoped call needs no --library.
    lib = daemon.sd_json("library", "create", "Only")["id"]
    types = json.loads(daemon.sd("call", "query:jobs.types.v1", check=True).stdout)
    assert "test.steps" in {t["name"] for t in types}
    r = daemon.sd("call", "action:jobs.dispatch.input.v1", '{"name": "test.noop", "input": {}}',
                  check=True)
    job = json.loads(r.stdout)["job_id"]
    assert daemon.sd_json("job", "info", job, "-l", lib)["name"] == "test.noop"  # sent once
    assert json.loads(daemon.sd("call", "query:test.ping.v1", '{"a": 1}', "-l", "Only",
                                check=True).stdout) == {"echo": {"a": 1}}
    daemon.sd("library", "create", "Other", check=True)
    r = daemon.sd("call", "query:jobs.types.v1")
    assert r.returncode == 1 and "-l/--library" in r.stderr
    assert "Only" in r.stderr and "Other" in r.stderr and lib in r.stderr
    assert daemon.sd("call", "query:jobs.types.v1", "-l", "other").returncode == 0


def test_libraries_by_name_id_or_prefix(daemon: Daemon) -> None:
    r = daemon.sd("job", "list")
    assert r.returncode == 1 and "sd library create" in r.stderr
    photos = daemon.sd_json("library", "create", "Photos")["id"]
    assert daemon.sd("job", "list", check=True).stdout.strip() == "no jobs"  # the only one
    work = daemon.sd_json("library", "create", "Work")["id"]
    r = daemon.sd("job", "list")
    assert r.returncode == 1 and "-l/--library" in r.stderr
    assert f"{photos}  Photos" in r.stderr and f"{work}  Work" in r.stderr
    job = daemon.sd_json("job", "dispatch", "test.noop", "-l", "Work")["job_id"]
    daemon.watch_job(job, "Work")
    for spec in ("Work", "work", work, work[:6], work[:6].upper()):
        rows = daemon.sd_json("job", "list", "--library", spec)
        assert [j["id"] for j in rows] == [job], spec
        assert daemon.sd_json("library", "info", spec)["id"] == work
    assert daemon.sd_json("job", "list", "-l", "Photos") == []
    r = subprocess.run([str(BIN / "sd"), "--socket", str(daemon.socket), "--json", "job", "list"],
                       capture_output=True, text=True, env={"SD_LIBRARY": "Work"})
    assert [j["id"] for j in json.loads(r.stdout)] == [job]
    # Unknown: every library is a candidate.
    r = daemon.sd("job", "list", "-l", "Holidays")
    assert r.returncode == 1 and "no library 'Holidays'" in r.stderr
    assert f"{photos}  Photos" in r.stderr and f"{work}  Work" in r.stderr
    # Ambiguous: the libraries that match, to choose by id.
    twin = daemon.sd_json("library", "create", "Work")["id"]
    r = daemon.sd("job", "list", "-l", "Work")
    assert r.returncode == 1 and "2 libraries match 'Work'" in r.stderr and "ID" in r.stderr
    assert work in r.stderr and twin in r.stderr and photos not in r.stderr
    r = daemon.sd("library", "delete", "Work")
    assert r.returncode == 1 and "2 libraries match" in r.stderr
    assert daemon.sd("library", "delete", twin[:8], check=True).stdout.strip() == \
        f"deleted library {twin}"
    assert {lib["id"] for lib in daemon.sd_json("library", "list")} == {photos, work}
    r = daemon.sd("events", "-l", "Nope")
    assert r.returncode == 1 and "no library 'Nope'" in r.stderr


def test_argument_errors_name_the_flags(daemon: Daemon) -> None:
    daemon.sd("library", "create", "L", check=True)
    r = daemon.sd("entries", "ls", "--parent", "sub")
    assert r.returncode == 1 and r.stderr.strip() == "error: the --parent filter needs --location"
    r = daemon.sd("job", "dispatch", "test.steps", "--input", "5")
    assert r.returncode == 1 and "at --input" in r.stderr and "$." not in r.stderr
    r = daemon.sd("job", "dispatch", "test.steps", "--input", '{"count": "x"}')
    assert r.returncode == 1 and "$.count" in r.stderr  # a field of the job's own input stays
    for args, flag in ((["entries", "ls", "--limit", "-1"], "--limit"),
                       (["entries", "read", "1", "--offset", "-1"], "--offset"),
                       (["entries", "read", "1", "--length", "-5"], "--length")):
        r = daemon.sd(*args)
        assert r.returncode == 2 and f"'{flag}'" in r.stderr, (args, r.stderr)


def test_completion_scripts(daemon: Daemon) -> None:
    daemon.sd("library", "create", "Photos", check=True)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "SD_SOCKET": str(daemon.socket)}
    script = daemon.sd("completion", "bash", check=True).stdout

    def complete(*words: str) -> list[str]:
        """What bash offers after ``words`` (the last one being typed), as a shell would."""
        line = " ".join(words)
        r = subprocess.run(["bash", "-c", f'eval "$1"; COMP_WORDS=({line}); '
                            f"COMP_CWORD={len(words) - 1}; _sd_completion sd; "
                            'printf "%s\\n" "${COMPREPLY[@]}"', "bash", script],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()
    assert complete("sd", "lib") == ["library"]
    assert complete("sd", "job", "") == sorted(["cancel", "dispatch", "info", "list", "pause",
                                                "resume", "run", "watch"])
    assert complete("sd", "job", "list", "--l") == ["--library"]
    assert complete("sd", "job", "list", "-l", "Ph") == ["Photos"]
    zsh = daemon.sd("completion", "zsh", check=True).stdout
    assert zsh.startswith("#compdef sd") and "_SD_COMPLETE=zsh_complete" in zsh
    fish = daemon.sd("completion", "fish", check=True).stdout
    assert "complete --no-files --command sd" in fish and "_SD_COMPLETE=fish_complete" in fish
    assert daemon.sd("completion", "tcsh").returncode == 2


def test_json_before_or_after_the_command(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    for args in (["--json", "library", "list"], ["library", "list", "--json"],
                 ["library", "--json", "list"]):
        assert [x["id"] for x in json.loads(daemon.sd(*args, check=True).stdout)] == [lib], args
    r = daemon.sd("job", "list", "-l", lib, "--json", check=True)
    assert json.loads(r.stdout) == []


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
sd completion
sd daemon stop
sd entries get
sd entries hash
sd entries ls
sd entries read
sd events
sd ext info
sd ext install
sd ext list
sd ext load
sd ext new
sd ext reload
sd ext rollback
sd ext stats
sd ext storage
sd ext triggers
sd ext unload
sd ext upgrade
sd job cancel
sd job dispatch
sd job info
sd job list
sd job pause
sd job resume
sd job run
sd job watch
sd library check
sd library create
sd library delete
sd library info
sd library list
sd location add
sd location identify
sd location list
sd location remove
sd location rescan
sd location watch
sd metrics
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
    listing = r.stdout.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ")]


def test_help_reads_well_at_80_columns() -> None:
    def help_text(*path: str) -> str:
        r = subprocess.run([str(BIN / "sd"), *path, "--help"], capture_output=True, text=True,
                           timeout=30, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        return r.stdout
    root = help_text()
    assert "-l/--library" in root and "Examples:" in root and "sd completion bash" in root
    for command in COMMANDS.strip().splitlines():
        text = help_text(*command.split()[1:])
        for line in text.splitlines():
            assert len(line) <= 80, (command, line)
    for group in ("", "job", "library", "location", "entries", "tag", "ext", "daemon"):
        listing = help_text(*group.split()).split("\nCommands:\n")[1].split("\n\n")[0]
        for line in listing.splitlines():
            assert not line.rstrip().endswith("..."), (group, line)  # a summary cut short


def test_help_lists_every_command() -> None:
    listed: list[str] = []
    for name in help_commands():
        listed += [f"sd {name} {sub}" for sub in help_commands(name)] or [f"sd {name}"]
    assert sorted(listed) == COMMANDS.strip().splitlines()


def test_entries_ls_streams_aligned_lines_across_pages(daemon: Daemon, tmp_path: Path) -> None:
    """`sd entries ls` prints page by page (issue 15: no table measuring every row first):
    every entry once, in id order, columns aligned on the first page's widths."""
    daemon.sd("library", "create", "L", check=True)
    tree = tmp_path / "many"
    tree.mkdir()
    for i in range(2500):
        (tree / f"f{i:04d}.txt").write_bytes(b"x" * (i % 7))
    daemon.sd("location", "add", str(tree), "--wait", check=True)
    want = daemon.sd_json("entries", "ls", "--limit", "0")
    assert len(want) == 2500
    lines = daemon.sd("entries", "ls", "--limit", "0", check=True).stdout.splitlines()
    assert lines[0].split() == ["id", "location_id", "kind", "size", "cas_id", "path"]
    assert [ln.split()[0] for ln in lines[1:]] == [str(e["id"]) for e in want]
    assert [ln.rsplit(" ", 1)[1] for ln in lines[1:]] == [e["path"] for e in want]
    start = lines[0].index("path")
    assert all(ln[start:] == e["path"] for ln, e in zip(lines[1:1001], want[:1000], strict=True))
    assert daemon.sd("entries", "ls", "--ext", "none").stdout.strip() == "no entries"
