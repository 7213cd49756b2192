"""Following a job as a person sees it: ``--wait`` in a real terminal (tmux, 80 columns),
plain lines when piped, JSON Lines with ``--json``; and the display's layout rules."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Daemon, wait_for

from rpc.cli_common import percent
from rpc.cli_watch import JobState, bar_lines

# A bar line: the whole name, the bar (done, then to do), the percent, labelled times.
BAR = re.compile(r"^(?P<name>.+?) (?P<done>━*)(?P<todo>─*) +(?P<pct>\d+)%  "
                 r"elapsed (?P<elapsed>\d+:\d\d:\d\d)  left (?P<left>\d+:\d\d:\d\d|-:--:--)$")
COUNTED = re.compile(r"^  Counted (?P<n>\d+)/(?P<of>\d+) \((?P<pct>\d+)% complete\)  "
                     r"(?P<items>\d+) items$")
PLAIN = re.compile(r"^test\.steps +(?P<pct>\d+)%(  step (?P<step>\d+)/\d+  \[(?P<items>\d+) items, "
                   r"[\d.]+ (B|KiB)\])?  elapsed (\d+:\d\d:\d\d|-:--:--)  "
                   r"left (\d+:\d\d:\d\d|-:--:--)$")


class Tmux:
    """A tmux server of our own (``-L``) with one detached pane of a fixed size."""

    def __init__(self, tmpdir: Path, width: int, height: int) -> None:
        if shutil.which("tmux") is None:
            raise AssertionError("tmux is missing: run scripts/ensure-test-tools.sh")
        self.server = f"sd-test-{os.getpid()}-{tmpdir.name}"
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def start(self, command: str) -> None:
        # The pane keeps its content after the command ends, for the last capture.
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", str(self.width),
                  "-y", str(self.height), f"{command}; echo EXIT=$?; sleep 600")

    def capture(self) -> list[str]:
        return [line.rstrip() for line in self.tmux("capture-pane", "-p").splitlines()]

    def steady_capture(self) -> list[str]:
        """A capture the same twice in a row: not a frame half drawn."""
        while True:
            first = self.capture()
            if self.capture() == first:
                return first

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux80(tmpdir_short: Path) -> Iterator[Tmux]:
    t = Tmux(tmpdir_short, 80, 24)
    yield t
    t.close()


@pytest.fixture
def tmux44(tmpdir_short: Path) -> Iterator[Tmux]:
    t = Tmux(tmpdir_short, 44, 24)
    yield t
    t.close()


def frame(lines: list[str]) -> tuple[re.Match[str], re.Match[str]] | None:
    """The bar line and the message line under it, if the pane shows them."""
    for i, line in enumerate(lines[:-1]):
        bar, counted = BAR.match(line), COUNTED.match(lines[i + 1])
        if bar and counted:
            return bar, counted
    return None


def check_frame(bar: re.Match[str], counted: re.Match[str]) -> int:
    """The rules of the display, on one frame; returns the percent shown."""
    assert bar["name"] == "test-extension:counter"  # the whole name, not cut
    pct = int(bar["pct"])
    # The job says "(26% complete)" while the bar says 26%: the same rounding.
    assert int(counted["pct"]) == pct == int(counted["n"]) * 100 // int(counted["of"])
    width = len(bar["done"]) + len(bar["todo"])
    assert width >= 10
    # The bar is filled as far as the percent says (to the nearest cell).
    assert round(width * pct / 100) <= len(bar["done"]) <= round(width * (pct + 1) / 100)
    return pct


def test_wait_in_a_real_terminal_at_80_columns(ext_daemon: Daemon, tmux80: Tmux) -> None:
    d = ext_daemon
    d.sd("library", "create", "Main", check=True)
    state = json.dumps({"current": 0, "target": 60, "spin": 20_000_000})
    tmux80.start(f"{shlex.quote(str(BIN / 'sd'))} --socket {shlex.quote(str(d.socket))} "
                 f"job run test-extension counter --state {shlex.quote(state)} --wait")

    def mid_run() -> tuple[list[str], re.Match[str], re.Match[str]] | None:
        lines = tmux80.steady_capture()
        found = frame(lines)
        if found and 0 < int(found[0]["pct"]) < 100:
            return lines, *found
        assert not any(line.startswith("EXIT=") for line in lines), "\n".join(lines)
        return None
    lines, bar, counted = wait_for(mid_run, 60, lambda: "\n".join(tmux80.capture()))
    assert all(len(line) <= 80 for line in lines)
    assert not any("…" in line for line in lines), "\n".join(lines)
    check_frame(bar, counted)
    assert bar["left"] != "-:--:--" or int(bar["pct"]) < 5  # an estimate once it moves

    def ended() -> list[str] | None:
        lines = tmux80.steady_capture()
        return lines if any(line.startswith("EXIT=") for line in lines) else None
    lines = wait_for(ended, 90, lambda: "\n".join(tmux80.capture()))
    text = "\n".join(lines)
    assert "EXIT=0" in text
    found = frame(lines)
    assert found, text
    bar, counted = found
    assert check_frame(bar, counted) == 100 and bar["todo"] == "" and bar["left"] == "0:00:00"
    assert counted["n"] == "60" and counted["items"] == "60"
    assert re.search(r"^job \S+ completed: \{\"current\":60,\"target\":60", text, re.M), text


def test_narrow_terminal_puts_the_name_on_its_own_line(ext_daemon: Daemon, tmux44: Tmux) -> None:
    d = ext_daemon
    d.sd("library", "create", "Main", check=True)
    state = json.dumps({"current": 0, "target": 30, "spin": 20_000_000})
    # A COLUMNS left from a wider window must not win over the terminal's size.
    tmux44.start(f"env COLUMNS=80 {shlex.quote(str(BIN / 'sd'))} --socket {shlex.quote(str(d.socket))} "
                 f"job run test-extension counter --state {shlex.quote(state)} --wait")

    def ended() -> list[str] | None:
        lines = tmux44.steady_capture()
        return lines if any(line.startswith("EXIT=") for line in lines) else None
    lines = wait_for(ended, 90, lambda: "\n".join(tmux44.capture()))
    text = "\n".join(lines)
    assert "EXIT=0" in text and all(len(line) <= 44 for line in lines)
    i = lines.index("test-extension:counter")  # the whole name, alone
    bar = re.match(r"^(━+) +100%  elapsed \d+:\d\d:\d\d  left 0:00:00$", lines[i + 1])
    assert bar, text
    assert lines[i + 2] == "  Counted 30/30 (100% complete)  30 items", text


def test_piped_wait_prints_plain_lines(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    cmd = [str(BIN / "sd"), "--socket", str(daemon.socket), "job", "dispatch", "test.steps",
           "--input", json.dumps({"count": 60, "delay": 0.08}), "--wait"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    queued = proc.stdout.readline()
    assert queued.startswith("queued job "), queued
    job_id = queued.split()[2]
    lines, read_at = [proc.stdout.readline().rstrip("\n")], [time.monotonic()]
    # A line arrives while the job runs (not only at its end).
    assert daemon.sd_json("job", "info", job_id, "-l", lib)["status"] in ("queued", "running")
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        read_at.append(time.monotonic())
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    progress, outcome = lines[:-1], lines[-1]
    assert outcome.startswith(f"job {job_id} completed: ")
    matches = [PLAIN.match(line) for line in progress]
    assert all(matches), progress
    pcts = [int(m["pct"]) for m in matches if m]
    assert pcts == sorted(pcts) and pcts[-1] == 100 and len(pcts) >= 3
    last = matches[-1]
    assert last and last["step"] == "60" and last["items"] == "60"  # the final state
    # At most one line a second; only the final state may follow sooner.
    gaps = [b - a for a, b in zip(read_at[:-2], read_at[1:-1], strict=True)]
    assert all(g >= 0.9 for g in gaps[:-1]), gaps
    assert not any("\x1b" in line or "━" in line for line in lines)  # no terminal drawing


def test_piped_job_watch_prints_while_the_job_runs(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    job = daemon.sd_json("job", "dispatch", "test.steps", "--input",
                         json.dumps({"count": 50, "delay": 0.1}))["job_id"]
    proc = subprocess.Popen([str(BIN / "sd"), "--socket", str(daemon.socket), "job", "watch",
                             job], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert PLAIN.match(first.rstrip("\n")), first
    assert daemon.sd_json("job", "info", job, "-l", lib)["status"] in ("queued", "running")
    rest = proc.stdout.read().splitlines()
    assert proc.wait(30) == 0
    assert rest[-1] == f"job {job} completed: " + '{"done":50,"started_at":0}'
    last = PLAIN.match(rest[-2])
    assert last and last["pct"] == "100" and last["step"] == "50"


def test_json_wait_and_watch_print_json_lines(daemon: Daemon) -> None:
    lib = daemon.sd_json("library", "create", "L")["id"]
    r = daemon.sd("--json", "job", "dispatch", "test.steps", "--input",
                  json.dumps({"count": 5, "delay": 0.02}), "--wait")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    events, info = rows[:-1], rows[-1]
    job_id = info["id"]
    assert info["status"] == "completed" and info["output"] == {"done": 5, "started_at": 0}
    assert all(ev["job_id"] == job_id for ev in events)
    kinds = [ev["kind"] for ev in events]
    assert kinds[-1] == "job.completed" and kinds.count("job.progress") >= 1
    assert [ev["items"] for ev in events if ev["kind"] == "job.progress"][-1] == 5

    # `job watch` of a job that fails: its events, its info, exit code 4.
    job = daemon.sd_json("job", "dispatch", "test.steps", "--input",
                         json.dumps({"count": 30, "delay": 0.05, "fail_at": 20}))["job_id"]
    r = daemon.sd("--json", "job", "watch", job, "-l", lib)
    assert r.returncode == 4, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows[-1]["status"] == "failed" and "boom at step 20" in rows[-1]["error"]
    assert rows[-2]["kind"] == "job.failed" and rows[-2]["job_id"] == job


def state_at(name: str, progress: float, message: str, items: int = 0) -> JobState:
    s = JobState(name, started_at=1000.0)
    s.update({"progress": 0.0})
    s.first = (1000.0, 0.0)
    s.update({"progress": progress, "message": message, "items": items})
    return s


@pytest.mark.parametrize("width", [80, 60, 40])
def test_display_fits_the_width_without_cutting(width: int) -> None:
    long_message = "hashed 1234 of 5678 files in /home/someone/Pictures/2024/holidays/raw " * 2
    for name in ("locations.identify", "an-extension-with-a-long-name some_job_name"):
        s = state_at(name, 0.265, long_message, items=9)
        lines = bar_lines(s, 1010.0, width)
        with_bar = [(before, bar, after) for before, bar, after in lines if bar]
        assert len(with_bar) == 1
        before, bar, after = with_bar[0]
        assert len(before) + bar + len(after) <= width and bar >= 1
        assert " 26%" in after and "elapsed 0:00:10" in after and "left 0:00:27" in after
        assert any(b.strip() == name for b, _, _ in lines), lines  # whole, with the bar or alone
        assert any(long_message in b for b, bar_w, _ in lines if not bar_w)  # wrapped, not cut


def test_percent_rounds_like_the_jobs() -> None:
    # The counter job says floor(n * 100 / target); its progress is a float32.
    import struct

    def f32(x: float) -> float:
        return float(struct.unpack("f", struct.pack("f", x))[0])
    for target in (3, 7, 60, 100, 1000):
        for n in range(target + 1):
            assert percent(f32(n / target)) == n * 100 // target, (n, target)
