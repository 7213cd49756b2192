"""``sd location ...``: add, list, rescan, identify and remove indexed directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rpc.cli_common import Ctx, fmt_time, library_option, pass_ctx, print_table
from rpc.cli_watch import run_and_maybe_watch


@click.group()
def location() -> None:
    """Add, list, rescan and remove indexed directories."""


@location.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Display name (default: the directory's name)")
@click.option("--identify", is_flag=True, help="Also compute content hashes after indexing")
@click.option("--no-watch", is_flag=True, help="Do not follow changes live (only rescans)")
@click.option("--wait", is_flag=True, help="Follow the indexing job until it ends")
@library_option
@pass_ctx
def location_add(ctx: Ctx, path: Path, name: str | None, identify: bool, no_watch: bool,
                 wait: bool, library: str | None) -> None:
    """Add PATH as a location, index it and watch it for changes."""
    run_and_maybe_watch(ctx, library, "action:locations.add.input.v1",
                        {"path": str(path.resolve()), "name": name, "identify": identify,
                         "watch": not no_watch}, wait,
                        lambda r: click.echo(f"added location {r['location']['id']} "
                                             f"({r['location']['path']}); indexing job {r['job_id']}"))


@location.command("list")
@library_option
@pass_ctx
def location_list(ctx: Ctx, library: str | None) -> None:
    """List locations."""
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no locations (add one with `sd location add PATH`)")
            return
        print_table([{**r, "indexed": fmt_time(r["indexed_at"]), "index job": r["index_status"],
                      "watch": r["watch_state"], "last fallback": r["watch_note"]}
                     for r in rows],
                    ["id", "name", "path", "entries", "indexed", "index job", "watch",
                     "last fallback"])
    ctx.out(ctx.lib_call(library, "query:locations.list.v1", {}), human)


@location.command("watch")
@click.argument("location_id", type=int)
@click.argument("state", type=click.Choice(["on", "off"]))
@library_option
@pass_ctx
def location_watch(ctx: Ctx, location_id: int, state: str, library: str | None) -> None:
    """Turn live watching of a location on or off.

    Turning it on rescans the location (what changed while it was off)."""
    def human(r: dict[str, Any]) -> None:
        click.echo(f"location {location_id}: {r['location']['watch_state']}"
                   + (f"; rescan job {r['job_id']}" if r["job_id"] else ""))
    ctx.out(ctx.lib_call(library, "action:locations.watch.input.v1",
                         {"id": location_id, "on": state == "on"}), human)


@location.command("rescan")
@click.argument("location_id", type=int)
@click.option("--identify", is_flag=True, help="Also compute missing content hashes")
@click.option("--wait", is_flag=True, help="Follow the indexing job until it ends")
@library_option
@pass_ctx
def location_rescan(ctx: Ctx, location_id: int, identify: bool, wait: bool,
                    library: str | None) -> None:
    """Index a location again (only what changed is written)."""
    run_and_maybe_watch(ctx, library, "action:locations.rescan.input.v1",
                        {"id": location_id, "identify": identify}, wait,
                        lambda r: click.echo(f"location {location_id}: indexing job {r['job_id']}"
                                             + (" (already running)" if r["already_running"] else "")))


@location.command("identify")
@click.argument("location_id", type=int)
@click.option("--wait", is_flag=True, help="Follow the job until it ends")
@library_option
@pass_ctx
def location_identify(ctx: Ctx, location_id: int, wait: bool, library: str | None) -> None:
    """Compute the content hash (cas_id) of every file that has none."""
    run_and_maybe_watch(ctx, library, "action:jobs.dispatch.input.v1",
                        {"name": "locations.identify", "input": {"location_id": location_id}}, wait,
                        lambda r: click.echo(f"location {location_id}: identify job {r['job_id']}"))


@location.command("remove")
@click.argument("location_id", type=int)
@library_option
@pass_ctx
def location_remove(ctx: Ctx, location_id: int, library: str | None) -> None:
    """Forget a location and its entries (not the files on disk)."""
    ctx.out(ctx.lib_call(library, "action:locations.remove.input.v1", {"id": location_id}),
            lambda r: click.echo(f"removed location {r['removed']} ({r['entries']} entries)"))
