"""``sd location ...``, ``sd entries ...``, ``sd tag ...`` and ``sd ext storage``."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from rpc.cli import Ctx, _kv, _table, _ts, cli, library_option, pass_ctx, resolve_library
from rpc.cli_ext import ext
from rpc.cli_jobs import run_and_maybe_watch
from rpc.client import Client

KINDS = ["file", "dir", "symlink", "other"]
_enc = msgspec.json.Encoder()


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


# --- locations ----------------------------------------------------------------------------------
@cli.group()
def location() -> None:
    """Add, list, rescan and remove indexed directories."""


@location.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Display name (default: the directory's name)")
@click.option("--identify", is_flag=True, help="Also compute content hashes after indexing")
@click.option("--wait", is_flag=True, help="Follow the indexing job until it ends")
@library_option
@pass_ctx
def location_add(ctx: Ctx, path: Path, name: str | None, identify: bool, wait: bool,
                 library: str | None) -> None:
    """Add PATH as a location and index it."""
    run_and_maybe_watch(ctx, library, "action:locations.add.input.v1",
                        {"path": str(path.resolve()), "name": name, "identify": identify}, wait,
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
        _table([{**r, "indexed": _ts(r["indexed_at"]), "index job": r["index_status"]}
                for r in rows], ["id", "name", "path", "entries", "indexed", "index job"])
    ctx.out(ctx.lib_call(library, "query:locations.list.v1", {}), human)


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
    """Forget a location and its entries (files on disk are not touched)."""
    ctx.out(ctx.lib_call(library, "action:locations.remove.input.v1", {"id": location_id}),
            lambda r: click.echo(f"removed location {r['removed']} ({r['entries']} entries)"))


# --- entries --------------------------------------------------------------------------------------
def _all_entries(ctx: Ctx, library: str | None, query: dict[str, Any], limit: int) -> list[Any]:
    """Follow ``next_cursor`` until ``limit`` entries (0: all) are in."""
    async def go(c: Client) -> list[Any]:
        lib = await resolve_library(c, library)
        out: list[Any] = []
        cursor = None
        while True:
            page_size = 1000 if not limit else min(1000, limit - len(out))
            page = await c.call("query:entries.list.v1",
                                {**query, "cursor": cursor, "limit": page_size}, lib)
            out += page["entries"]
            cursor = page["next_cursor"]
            if cursor is None or (limit and len(out) >= limit):
                return out
    return ctx.run(go)


def _entries_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no entries")
        return
    _table([{**r, "size": _size(r["size"]) if r["kind"] == "file" else ""} for r in rows],
           ["id", "location_id", "kind", "size", "cas_id", "path"])


@cli.group()
def entries() -> None:
    """List, inspect and read indexed entries."""


@entries.command("ls")
@click.option("--location", "location_id", type=int, default=None)
@click.option("--parent", default=None, help="Only children of this relative path ('' = top)")
@click.option("--ext", "extension", default=None)
@click.option("--kind", type=click.Choice(KINDS), default=None)
@click.option("--tag", default=None, help="Only entries with this tag (name)")
@click.option("--cas-id", default=None)
@click.option("--order", type=click.Choice(["id", "size"]), default="id")
@click.option("--limit", type=int, default=100, show_default=True, help="0 for all")
@library_option
@pass_ctx
def entries_ls(ctx: Ctx, location_id: int | None, parent: str | None, extension: str | None,
               kind: str | None, tag: str | None, cas_id: str | None, order: str, limit: int,
               library: str | None) -> None:
    """List entries matching every filter given."""
    query = {"location_id": location_id, "parent": parent, "extension": extension, "kind": kind,
             "tag": tag, "cas_id": cas_id, "order": order}
    ctx.out(_all_entries(ctx, library, query, limit), _entries_table)


@entries.command("get")
@click.argument("entry_id", type=int)
@library_option
@pass_ctx
def entries_get(ctx: Ctx, entry_id: int, library: str | None) -> None:
    """Show one entry and its tags."""
    ctx.out(ctx.lib_call(library, "query:entries.get.v1", {"id": entry_id}), _kv)


@entries.command("read")
@click.argument("entry_id", type=int)
@click.option("--offset", type=int, default=0)
@click.option("--length", type=int, default=64 * 1024, show_default=True,
              help="At most 1 MiB per read")
@library_option
@pass_ctx
def entries_read(ctx: Ctx, entry_id: int, offset: int, length: int, library: str | None) -> None:
    """Write bytes of a file entry to stdout (the JSON reply with --json)."""
    r = ctx.lib_call(library, "query:entries.read.v1",
                  {"entry_id": entry_id, "offset": offset, "length": length})
    if ctx.json:
        ctx.out(r)
    else:
        sys.stdout.buffer.write(base64.b64decode(r["data"]))


# --- tags ---------------------------------------------------------------------------------------------
@cli.group()
def tag() -> None:
    """Create tags, put them on entries, and list what is tagged."""


@tag.command("create")
@click.argument("name")
@click.option("--color", default=None)
@library_option
@pass_ctx
def tag_create(ctx: Ctx, name: str, color: str | None, library: str | None) -> None:
    """Create a tag (nothing happens if it exists)."""
    ctx.out(ctx.lib_call(library, "action:tags.create.input.v1", {"name": name, "color": color}),
            lambda r: click.echo(f"{'created' if r['created'] else 'exists:'} tag {r['id']} "
                                 f"({r['name']})"))


@tag.command("list")
@library_option
@pass_ctx
def tag_list(ctx: Ctx, library: str | None) -> None:
    """List tags with their entry counts."""
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no tags")
            return
        _table(rows, ["id", "name", "entries", "color"])
    ctx.out(ctx.lib_call(library, "query:tags.list.v1", {}), human)


def _tag_entries(verb: str) -> Any:
    @click.argument("name")
    @click.argument("entry_ids", type=int, nargs=-1, required=True)
    @library_option
    @pass_ctx
    def command(ctx: Ctx, name: str, entry_ids: tuple[int, ...], library: str | None) -> None:
        r = ctx.lib_call(library, f"action:tags.{verb}.input.v1",
                      {"tag": name, "entry_ids": list(entry_ids)})
        def human(r: dict[str, Any]) -> None:
            if verb == "apply":
                click.echo(f"{name}: tagged {r['applied']} entries"
                           + (f"; unknown ids: {r['unknown']}" if r["unknown"] else ""))
            else:
                click.echo(f"{name}: untagged {r['removed']} entries")
        ctx.out(r, human)
    command.__doc__ = ("Put tag NAME on entries." if verb == "apply" else "Take tag NAME off entries.")
    return command


tag.command("apply")(_tag_entries("apply"))
tag.command("remove")(_tag_entries("remove"))


@tag.command("ls")
@click.argument("name")
@click.option("--location", "location_id", type=int, default=None)
@library_option
@pass_ctx
def tag_ls(ctx: Ctx, name: str, location_id: int | None, library: str | None) -> None:
    """List every entry with tag NAME."""
    ctx.out(_all_entries(ctx, library, {"tag": name, "location_id": location_id}, 0),
            _entries_table)


@tag.command("delete")
@click.argument("name")
@library_option
@pass_ctx
def tag_delete(ctx: Ctx, name: str, library: str | None) -> None:
    """Delete tag NAME (entries keep existing)."""
    ctx.out(ctx.lib_call(library, "action:tags.delete.input.v1", {"tag": name}),
            lambda r: click.echo(f"deleted tag {r['deleted']} ({name})"))


# --- extension storage ------------------------------------------------------------------------------
@ext.command("storage")
@click.argument("ext_id")
@click.option("--prefix", default="", help="Only keys starting with this")
@library_option
@pass_ctx
def ext_storage(ctx: Ctx, ext_id: str, prefix: str, library: str | None) -> None:
    """Show what extension EXT_ID stored in a library (keys and JSON values)."""
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo(f"{ext_id} stored nothing in this library")
        for r in rows:
            click.echo(f"{r['key']} = {_enc.encode(r['value']).decode()}")
    ctx.out(ctx.lib_call(library, "query:extension_storage.inspect.v1",
                      {"extension_id": ext_id, "prefix": prefix, "limit": 1000}), human)
