"""``sd entries ...``: list, inspect, read and hash indexed entries."""

from __future__ import annotations

import base64
import sys
from typing import Any

import click

from rpc.cli_common import (
    Ctx,
    EntryLines,
    all_entries,
    library_option,
    pass_ctx,
    print_kv,
    stream_entries,
)

KINDS = ["file", "dir", "symlink", "other"]


@click.group()
def entries() -> None:
    """List, inspect, read and hash indexed entries."""


@entries.command("ls")
@click.option("--location", "location_id", type=int, default=None)
@click.option("--parent", default=None, help="Only children of this relative path ('' = top)")
@click.option("--ext", "extension", default=None)
@click.option("--kind", type=click.Choice(KINDS), default=None)
@click.option("--tag", default=None, help="Only entries with this tag (name)")
@click.option("--cas-id", default=None)
@click.option("--order", type=click.Choice(["id", "size"]), default="id")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, help="0 for all")
@library_option
@pass_ctx
def entries_ls(ctx: Ctx, location_id: int | None, parent: str | None, extension: str | None,
               kind: str | None, tag: str | None, cas_id: str | None, order: str, limit: int,
               library: str | None) -> None:
    """List entries matching every filter given."""
    query = {"location_id": location_id, "parent": parent, "extension": extension, "kind": kind,
             "tag": tag, "cas_id": cas_id, "order": order}
    if ctx.json:
        ctx.out(all_entries(ctx, library, query, limit))
        return
    lines = EntryLines()  # streamed: 200,000 rows print as they arrive
    if not stream_entries(ctx, library, query, limit, lines):
        click.echo("no entries")


@entries.command("get")
@click.argument("entry_id", type=int)
@library_option
@pass_ctx
def entries_get(ctx: Ctx, entry_id: int, library: str | None) -> None:
    """Show one entry and its tags."""
    ctx.out(ctx.lib_call(library, "query:entries.get.v1", {"id": entry_id}), print_kv)


@entries.command("read")
@click.argument("entry_id", type=int)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--length", type=click.IntRange(min=0), default=64 * 1024, show_default=True,
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


@entries.command("hash")
@click.argument("entry_ids", type=int, nargs=-1, required=True)
@library_option
@pass_ctx
def entries_hash(ctx: Ctx, entry_ids: tuple[int, ...], library: str | None) -> None:
    """Whole-content BLAKE3 of file entries (cached per file)."""
    r = ctx.lib_call(library, "query:entries.content_hash.v1", {"entry_ids": list(entry_ids)})

    def human(result: dict[str, Any]) -> None:
        for h in result["hashes"]:
            if h["hash"] is None:
                click.echo(f"{h['entry_id']}  error: {h['error']['message']}")
            else:
                click.echo(f"{h['entry_id']}  {h['hash']}" + ("  (cached)" if h["cached"] else ""))
        click.echo(f"{result['bytes_read']} bytes read")
    ctx.out(r, human)
