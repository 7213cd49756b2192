"""``sd job ...``: list, inspect, control, start and watch jobs."""

from __future__ import annotations

import sys
from typing import Any

import click

from rpc.cli_common import (
    Ctx,
    fmt_time,
    json_argument,
    library_option,
    pass_ctx,
    percent,
    print_kv,
    print_table,
    resolve_library,
)
from rpc.cli_watch import run_and_maybe_watch, watch
from rpc.client import Client


@click.group()
def job() -> None:
    """List, inspect, control and watch jobs."""


@job.command("list")
@click.option("--status", type=click.Choice(
    ["queued", "running", "paused", "completed", "failed", "cancelled"]), default=None,
    help="Only jobs in this state")
@click.option("--extension", "extension_id", default=None, metavar="ID",
              help="Only the jobs of this extension")
@library_option
@pass_ctx
def job_list(ctx: Ctx, status: str | None, extension_id: str | None,
             library: str | None) -> None:
    """List jobs, newest first."""
    rows = ctx.lib_call(library, "query:jobs.list.v1",
                        {"status": status, "extension_id": extension_id})

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no jobs")
            return
        print_table([{**r, "progress": f"{percent(r['progress'])}%",
                      "created": fmt_time(r["created_at"])} for r in rows],
                    ["id", "name", "status", "progress", "items", "created", "message", "error"])
    ctx.out(rows, human)


@job.command("info")
@click.argument("job_id")
@click.option("--transitions", "table", is_flag=True,
              help="Transitions as a table: when, status, note (e.g. each run's version)")
@library_option
@pass_ctx
def job_info(ctx: Ctx, job_id: str, table: bool, library: str | None) -> None:
    """Show one job, with its transitions."""
    def human(r: dict[str, Any]) -> None:
        if not table:
            print_kv(r)
            return
        print_kv({k: v for k, v in r.items() if k != "transitions"})
        click.echo()
        print_table([{"at": fmt_time(t["at"]), "status": t["status"], "note": t["note"]}
                     for t in r.get("transitions") or []], ["at", "status", "note"])
    ctx.out(ctx.lib_call(library, "query:jobs.info.v1", {"id": job_id, "transitions": True}),
            human)


def _control(verb: str) -> click.Command:
    @click.command(verb)
    @click.argument("job_id")
    @library_option
    @pass_ctx
    def command(ctx: Ctx, job_id: str, library: str | None) -> None:
        r = ctx.lib_call(library, f"action:jobs.{verb}.input.v1", {"id": job_id})
        ctx.out(r, lambda r: click.echo(f"{job_id}: {r['status'].replace('_', ' ')}"))
    command.help = f"{verb.capitalize()} a job."
    return command


for _verb in ("pause", "resume", "cancel"):
    job.add_command(_control(_verb))


@job.command("dispatch")
@click.argument("name")
@click.option("--input", default="{}", help="The job's input as JSON")
@click.option("--wait", is_flag=True, help="Watch the job until it ends")
@library_option
@pass_ctx
def job_dispatch(ctx: Ctx, name: str, input: str, wait: bool, library: str | None) -> None:
    """Queue a job by type name."""
    run_and_maybe_watch(ctx, library, "action:jobs.dispatch.input.v1",
                        {"name": name, "input": json_argument(input, "--input")}, wait)


@job.command("run")
@click.argument("extension_id")
@click.argument("job_name")
@click.option("--state", default="{}", help="The job's initial state as JSON")
@click.option("--wait", is_flag=True, help="Watch the job until it ends")
@library_option
@pass_ctx
def job_run(ctx: Ctx, extension_id: str, job_name: str, state: str, wait: bool,
            library: str | None) -> None:
    """Run a job an extension registered.

    \b
    sd job run test-extension counter --state '{"target": 10}' --wait
    """
    run_and_maybe_watch(ctx, library, "action:extensions.run_job.input.v1",
                        {"extension_id": extension_id, "job": job_name,
                         "state": json_argument(state, "--state")}, wait)


@job.command("watch")
@click.argument("job_id")
@library_option
@pass_ctx
def job_watch(ctx: Ctx, job_id: str, library: str | None) -> None:
    """Show live progress until the job ends; exit with its outcome."""
    async def go(c: Client) -> int:
        return await watch(c, await resolve_library(c, library), job_id, ctx.json)
    sys.exit(ctx.run(go))
