"""Following a job from the CLI: ``--wait`` on commands that start one, and ``sd job watch``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from daemon.errors import SdError
from rpc.cli_common import ENCODE, EXIT_FOR_JOB_STATUS, EXIT_OK, Ctx, resolve_library
from rpc.client import Client

FINAL_EVENTS = {"job.completed", "job.failed", "job.cancelled", "job.paused"}


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
        return await watch(c, lib, r["job_id"], ctx.json)
    sys.exit(ctx.run(go))


async def watch(c: Client, library_id: str, job_id: str, as_json: bool) -> int:
    """Follow one job's events; returns the exit code of its outcome."""
    # Subscribe before reading the job, so no event falls between the two.
    await c.subscribe(library_id=library_id)
    info = await c.call("query:jobs.info.v1", {"id": job_id}, library_id)
    if info["status"] in EXIT_FOR_JOB_STATUS and info["status"] != "paused":
        return _report(info, as_json)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.fields[name]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[counters]}"), TimeRemainingColumn(),
               TextColumn("{task.description}")]
    with Progress(*columns, disable=as_json, transient=False) as bar:
        task = bar.add_task(info["message"], total=1.0, completed=info["progress"], name=info["name"],
                            counters=_counters(info))
        while True:
            ev = await c.next_event()
            if ev is None:
                raise SdError("the daemon closed the connection while watching")
            if ev.get("job_id") != job_id:
                continue
            if as_json:
                click.echo(ENCODE(ev).decode())
            if ev["kind"] == "job.progress":
                bar.update(task, completed=ev["progress"], description=ev["message"],
                           counters=_counters(ev))
            elif ev["kind"] in FINAL_EVENTS:
                if ev["kind"] == "job.completed":
                    bar.update(task, completed=1.0)
                break
    info = await c.call("query:jobs.info.v1", {"id": job_id}, library_id)
    return _report(info, as_json)


def _counters(d: dict[str, Any]) -> str:
    parts = [f"{d['items']} items"] if d.get("items") else []
    if d.get("bytes"):
        parts.append(f"{d['bytes']} bytes")
    return " ".join(parts)


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
