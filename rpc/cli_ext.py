"""``sd ext ...`` and ``sd job run``: extensions and their jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec

from rpc.cli import Ctx, _kv, _table, cli, library_option, pass_ctx
from rpc.cli_jobs import job, run_and_maybe_watch


@cli.group()
def ext() -> None:
    """Install, list, load and unload extensions."""


def _summary(r: dict[str, Any]) -> None:
    m = r.get("manifest") or {}
    jobs = ", ".join(j["name"] for j in r.get("jobs", [])) or "-"
    click.echo(f"{r['id']} {m.get('version', '')}: {r['state']}; jobs: {jobs}"
               + (f"; error: {r['error']}" if r.get("error") else ""))


@ext.command("install")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_ctx
def ext_install(ctx: Ctx, path: Path) -> None:
    """Install (and load) the extension at PATH: a directory with manifest.json, or a .wasm."""
    ctx.out(ctx.call("action:extensions.install.input.v1", {"path": str(path.resolve())}), _summary)


@ext.command("list")
@pass_ctx
def ext_list(ctx: Ctx) -> None:
    """List installed extensions."""
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no extensions installed")
            return
        _table([{"id": r["id"], "version": (r.get("manifest") or {}).get("version"),
                 "state": r["state"], "jobs": ", ".join(j["name"] for j in r["jobs"]),
                 "error": r.get("error")} for r in rows], ["id", "version", "state", "jobs", "error"])
    ctx.out(ctx.call("query:extensions.list.v1"), human)


@ext.command("info")
@click.argument("ext_id")
@pass_ctx
def ext_info(ctx: Ctx, ext_id: str) -> None:
    """Show an extension's manifest, jobs and state."""
    ctx.out(ctx.call("query:extensions.info.v1", {"id": ext_id}), _kv)


for _verb in ("load", "unload", "reload"):
    def _make(verb: str) -> Any:
        @click.argument("ext_id")
        @pass_ctx
        def command(ctx: Ctx, ext_id: str) -> None:
            r = ctx.call(f"action:extensions.{verb}.input.v1", {"id": ext_id})
            ctx.out(r, _summary if verb != "unload" else lambda r: click.echo(f"unloaded {ext_id}"))
        command.__doc__ = f"{verb.capitalize()} an extension."
        return command
    ext.command(_verb)(_make(_verb))


@job.command("run")
@click.argument("extension_id")
@click.argument("job_name")
@click.option("--state", default="{}", help="The job's initial state as JSON")
@click.option("--wait", is_flag=True, help="Watch the job until it ends")
@library_option
@pass_ctx
def job_run(ctx: Ctx, extension_id: str, job_name: str, state: str, wait: bool,
            library: str | None) -> None:
    """Run a job an extension registered: sd job run EXT JOB --state JSON --wait."""
    try:
        value = msgspec.json.decode(state)
    except msgspec.DecodeError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint="--state") from None
    run_and_maybe_watch(ctx, library, "action:extensions.run_job.input.v1",
                        {"extension_id": extension_id, "job": job_name, "state": value}, wait)
