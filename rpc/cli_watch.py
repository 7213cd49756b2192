"""Following a job from the CLI: ``--wait`` on commands that start one, and ``sd job watch``.

Three views of the same events: a live display on a terminal (a bar line, then the
message), plain lines when stdout is a pipe or a file (a line per progress change, at
most one a second, and the final state), and with ``--json`` one JSON object per event
followed by the job's info (JSON Lines). Each ends with the job's outcome, which decides
the exit code (``cli_common``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import click

from daemon.errors import SdError
from rpc.cli_common import (
    ENCODE,
    EXIT_FOR_JOB_STATUS,
    EXIT_OK,
    Ctx,
    fmt_duration,
    fmt_size,
    percent,
    resolve_library,
)
from rpc.client import Client

FINAL_EVENTS = {"job.completed", "job.failed", "job.cancelled", "job.paused"}
# What a watch subscribes to: a library's entries.* events (a watched location's every
# change) and the like never concern the job, and would only crowd its queue.
JOB_EVENTS = sorted({"job.queued", "job.started", "job.progress", "job.resumed", *FINAL_EVENTS})
PLAIN_INTERVAL = 1.0
"""Plain output prints at most one progress line per this many seconds."""
BAR_MIN, BAR_MAX = 10, 40


def run_and_maybe_watch(ctx: Ctx, library: str | None, method: str, request: dict[str, Any],
                        wait: bool, describe: Callable[[Any], None] | None = None) -> None:
    """Call an operation that returns a ``job_id``; with ``wait``, watch the job and exit
    with its outcome. ``describe`` prints the human line for the operation's result."""
    say = describe or (lambda r: click.echo(f"queued job {r['job_id']}"))

    async def go(c: Client) -> int:
        lib = await resolve_library(c, library)
        r = await c.call(method, request, lib)
        if not wait:
            ctx.out(r, say)
            return EXIT_OK
        if not ctx.json:
            say(r)
            sys.stdout.flush()
        return await watch(c, lib, r["job_id"], ctx.json)
    sys.exit(ctx.run(go))


@dataclass
class JobState:
    """What the views show; times are Unix times (the daemon runs on this machine)."""

    name: str
    progress: float = 0.0
    message: str = ""
    items: int = 0
    bytes: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    # The first progress seen while watching, and when: the base of the time left.
    first: tuple[float, float] | None = field(default=None, repr=False)

    def update(self, d: dict[str, Any]) -> None:
        self.progress = float(d.get("progress", self.progress))
        self.message = str(d.get("message", self.message))
        self.items = int(d.get("items", self.items))
        self.bytes = int(d.get("bytes", self.bytes))
        if self.first is None or self.progress < self.first[1]:
            self.first = (time.time(), self.progress)

    @property
    def percent(self) -> int:
        return percent(self.progress)

    def counters(self) -> str:
        parts = [f"{self.items} items"] if self.items else []
        if self.bytes:
            parts.append(fmt_size(self.bytes))
        return ", ".join(parts)

    def elapsed(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or now) - self.started_at

    def remaining(self, now: float) -> float | None:
        """From the rate seen while watching; None until there is one."""
        if self.finished_at is not None:
            return 0.0
        if self.first is None or self.progress <= self.first[1]:
            return None
        t0, p0 = self.first
        return (now - t0) * (1.0 - self.progress) / (self.progress - p0)

    def key(self) -> tuple[int, str, int, int]:
        """What counts as a change for plain output."""
        return (self.percent, self.message, self.items, self.bytes)


def times(state: JobState, now: float) -> str:
    return f"elapsed {fmt_duration(state.elapsed(now))}  left {fmt_duration(state.remaining(now))}"


def plain_line(state: JobState, now: float) -> str:
    counters = state.counters()
    return (f"{state.name} {state.percent:>3}%"
            + (f"  {state.message}" if state.message else "")
            + (f"  [{counters}]" if counters else "")
            + f"  {times(state, now)}")


def bar_lines(state: JobState, now: float, width: int) -> list[tuple[str, int, str]]:
    """The live display for ``width`` columns, as lines ``(before, bar width, after)``: the
    name, a bar, the percent and the labelled times (the name on a line of its own when it
    leaves no room for the bar), then the message and counters, which wrap rather than
    being cut. Lines without a bar have bar width 0."""
    tail = f" {state.percent:>3}%  {times(state, now)}"
    lines: list[tuple[str, int, str]] = []
    prefix = f"{state.name} "
    if len(prefix) + BAR_MIN + len(tail) > width:
        lines.append((state.name, 0, ""))
        prefix = ""
    lines.append((prefix, max(1, min(BAR_MAX, width - len(prefix) - len(tail))), tail))
    detail = "  ".join(x for x in (state.message, state.counters()) if x)
    if detail:
        lines.append(("  " + detail, 0, ""))
    return lines


class View(Protocol):
    def progress(self, state: JobState) -> None: ...
    def due(self) -> float | None: ...
    def flush(self, state: JobState) -> None: ...
    def event(self, ev: dict[str, Any]) -> None: ...
    def close(self, state: JobState) -> None: ...


class PlainView:
    """Lines for pipes and files: one per change at most every PLAIN_INTERVAL seconds; a
    change held back is printed when the interval is over or the job ends."""

    def __init__(self) -> None:
        self.last_at = float("-inf")
        self.last_key: tuple[int, str, int, int] | None = None
        self.pending = False

    def _print(self, state: JobState) -> None:
        click.echo(plain_line(state, time.time()))
        sys.stdout.flush()
        self.last_at = time.monotonic()
        self.last_key = state.key()
        self.pending = False

    def progress(self, state: JobState) -> None:
        if state.key() == self.last_key:
            return
        if time.monotonic() - self.last_at >= PLAIN_INTERVAL:
            self._print(state)
        else:
            self.pending = True

    def due(self) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self.last_at + PLAIN_INTERVAL - time.monotonic())

    def flush(self, state: JobState) -> None:
        if self.pending:
            self._print(state)

    def event(self, ev: dict[str, Any]) -> None:
        pass

    def close(self, state: JobState) -> None:
        if state.key() != self.last_key:
            self._print(state)


class JsonView:
    """One JSON object per event of the job, as the daemon sent it."""

    def progress(self, state: JobState) -> None:
        pass

    def due(self) -> float | None:
        return None

    def flush(self, state: JobState) -> None:
        pass

    def event(self, ev: dict[str, Any]) -> None:
        click.echo(ENCODE(ev).decode())
        sys.stdout.flush()

    def close(self, state: JobState) -> None:
        pass


class TerminalView:
    """A live display redrawn in place (rich), sized to the terminal on every redraw."""

    def __init__(self, state: JobState) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        console = Console()

        def render() -> Group:
            # The terminal's own size, read on each redraw: a COLUMNS left in the
            # environment is stale once the window is resized.
            try:
                console.width = os.get_terminal_size(sys.stdout.fileno()).columns
            except OSError:
                pass
            out = []
            for before, bar, after in bar_lines(state, time.time(), console.width):
                line = Text(overflow="fold")
                line.append(before, style="bold" if before.strip() == state.name else "")
                if bar:
                    done = round(bar * state.progress)
                    style = "bar.finished" if state.finished_at else "bar.complete"
                    line.append("━" * done, style=style)
                    line.append("─" * (bar - done), style="bar.back")
                line.append(after)
                out.append(line)
            return Group(*out)

        self.live = Live(console=console, get_renderable=render, refresh_per_second=4,
                         transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def progress(self, state: JobState) -> None:
        pass  # the next redraw (4 a second) shows it

    def due(self) -> float | None:
        return None

    def flush(self, state: JobState) -> None:
        pass

    def event(self, ev: dict[str, Any]) -> None:
        pass

    def close(self, state: JobState) -> None:
        self.live.refresh()
        self.live.stop()


async def watch(c: Client, library_id: str, job_id: str, as_json: bool) -> int:
    """Follow one job's events; returns the exit code of its outcome."""
    # Subscribe before reading the job, so no event falls between the two.
    await c.subscribe(JOB_EVENTS, library_id=library_id)
    info = await c.call("query:jobs.info.v1", {"id": job_id}, library_id)
    if info["status"] in EXIT_FOR_JOB_STATUS and info["status"] != "paused":
        return _report(info, as_json)
    state = JobState(info["name"],
                     started_at=info.get("started_at") if info["status"] == "running" else None)
    state.update(info)
    view: View
    if as_json:
        view = JsonView()
    elif sys.stdout.isatty():
        view = TerminalView(state)
    else:
        view = PlainView()
    try:
        view.progress(state)
        while True:
            due = view.due()
            try:
                ev = await asyncio.wait_for(c.next_event(), due)
            except TimeoutError:
                view.flush(state)
                continue
            if ev is None:
                raise SdError("the daemon closed the connection while watching")
            if ev.get("kind") == "events.dropped":
                # Some events did not reach us: the job's row says where it is.
                info = await c.call("query:jobs.info.v1", {"id": job_id}, library_id)
                state.update(info)
                if info["status"] in EXIT_FOR_JOB_STATUS:
                    state.finished_at = info.get("finished_at") or time.time()
                    break
                continue
            if ev.get("job_id") != job_id:
                continue
            view.event(ev)
            kind = ev["kind"]
            if kind == "job.started":
                state.started_at = ev["at"]
            elif kind == "job.progress":
                state.update(ev)
                view.progress(state)
            elif kind in FINAL_EVENTS:
                if kind == "job.completed":
                    state.progress = 1.0
                state.finished_at = ev["at"]
                break
    finally:
        view.close(state)
    info = await c.call("query:jobs.info.v1", {"id": job_id}, library_id)
    return _report(info, as_json)


def _report(info: dict[str, Any], as_json: bool) -> int:
    status = info["status"]
    if as_json:
        click.echo(ENCODE(info).decode())
    elif status == "completed":
        click.echo(f"job {info['id']} completed: {ENCODE(info['output']).decode()}")
    elif status == "failed":
        click.echo(f"job {info['id']} failed: {info['error']}", err=True)
    else:
        click.echo(f"job {info['id']} {status}")
    return EXIT_FOR_JOB_STATUS.get(status, EXIT_OK)
