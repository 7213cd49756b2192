"""``sd job ...`` and ``sd events``: jobs, live progress and the event stream."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
import msgspec

from daemon.errors import SdError
from rpc.cli import (
    EXIT_JOB_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_JOB_PAUSED,
    EXIT_OK,
    Ctx,
    _kv,
    _table,
    _ts,
    cli,
    fail,
    library_option,
    pass_ctx,
    resolve_library,
)
from rpc.client import Client

_enc = msgspec.json.Encoder()
FINAL_EVENTS = {"job.completed": EXIT_OK, "job.failed": EXIT_JOB_FAILED,
                "job.cancelled": EXIT_JOB_CANCELLED, "job.paused": EXIT_JOB_PAUSED}
FINAL_STATUS = {"completed": EXIT_OK, "failed": EXIT_JOB_FAILED, "cancelled": EXIT_JOB_CANCELLED,
                "paused": EXIT_JOB_PAUSED}


@cli.group()
def job() -> None:
    """List, inspect, control and watch jobs."""


@job.command("list")
@click.option("--status", type=click.Choice(
    ["queued", "running", "paused", "completed", "failed", "cancelled"]), default=None)
@library_option
@pass_ctx
def job_list(ctx: Ctx, status: str | None, library: str | None) -> None:
    """List jobs, newest first."""
    rows = ctx.lib_call(library, "query:jobs.list.v1", {"status": status})

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no jobs")
            return
        _table([{**r, "progress": f"{r['progress'] * 100:.0f}%", "created": _ts(r["created_at"])}
                for r in rows], ["id", "name", "status", "progress", "items", "created", "message"])
    ctx.out(rows, human)


@job.command("info")
@click.argument("job_id")
@library_option
@pass_ctx
def job_info(ctx: Ctx, job_id: str, library: str | None) -> None:
    """Show one job, with its transitions."""
    ctx.out(ctx.lib_call(library, "query:jobs.info.v1", {"id": job_id, "transitions": True}), _kv)


def _control(verb: str) -> Any:
    @click.argument("job_id")
    @library_option
    @pass_ctx
    def command(ctx: Ctx, job_id: str, library: str | None) -> None:
        r = ctx.lib_call(library, f"action:jobs.{verb}.input.v1", {"id": job_id})
        ctx.out(r, lambda r: click.echo(f"{job_id}: {r['status'].replace('_', ' ')}"))
    command.__doc__ = f"{verb.capitalize()} a job."
    return command


for _verb in ("pause", "resume", "cancel"):
    job.command(_verb)(_control(_verb))


@job.command("dispatch")
@click.argument("name")
@click.option("--input", "input_json", default="{}", help="The job's input as JSON")
@click.option("--wait", is_flag=True, help="Watch the job until it ends")
@library_option
@pass_ctx
def job_dispatch(ctx: Ctx, name: str, input_json: str, wait: bool, library: str | None) -> None:
    """Queue a job by type name."""
    try:
        value = msgspec.json.decode(input_json)
    except msgspec.DecodeError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint="--input") from None
    run_and_maybe_watch(ctx, library, "action:jobs.dispatch.input.v1",
                        {"name": name, "input": value}, wait)


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


@job.command("watch")
@click.argument("job_id")
@library_option
@pass_ctx
def job_watch(ctx: Ctx, job_id: str, library: str | None) -> None:
    """Show live progress until the job ends; exit with its outcome."""
    async def go(c: Client) -> int:
        return await watch(c, await resolve_library(c, library), job_id, ctx.json)
    sys.exit(ctx.run(go))


async def watch(c: Client, library_id: str, job_id: str, as_json: bool) -> int:
    """Follow one job's events; returns the exit code of its outcome."""
    # Subscribe before reading the job, so no event falls between the two.
    await c.subscribe(library_id=library_id)
    info = await c.call("query:jobs.info.v1", {"id": job_id}, library_id)
    if info["status"] in FINAL_STATUS and info["status"] != "paused":
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
                click.echo(_enc.encode(ev).decode())
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
        click.echo(_enc.encode(info).decode())
    elif status == "completed":
        click.echo(f"job {info['id']} completed: {_enc.encode(info['output']).decode()}")
    elif status == "failed":
        click.echo(f"job {info['id']} failed: {info['error']}", err=True)
    else:
        click.echo(f"job {info['id']} {status}")
    return FINAL_STATUS.get(status, EXIT_OK)


@cli.command("events")
@click.option("--kind", "kinds", multiple=True, help="Only these event kinds (repeatable)")
@click.option("--library", "-l", default=None, help="Only events of this library")
@pass_ctx
def events(ctx: Ctx, kinds: tuple[str, ...], library: str | None) -> None:
    """Stream events until interrupted (JSON lines with --json)."""
    async def go(c: Client) -> None:
        async for ev in c.events(list(kinds) or None, library):
            if ctx.json:
                click.echo(_enc.encode(ev).decode())
            else:
                rest = {k: v for k, v in ev.items() if k not in ("kind", "at")}
                click.echo(f"{_ts(ev['at'])} {ev['kind']:<18} {_enc.encode(rest).decode()}")
            sys.stdout.flush()
        raise SdError("the daemon closed the event stream")
    try:
        ctx.run(go)
    except SdError as e:
        fail(e)

