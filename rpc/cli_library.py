"""``sd library ...``: create, list, inspect and delete libraries."""

from __future__ import annotations

from typing import Any

import click

from rpc.cli_common import Ctx, fmt_time, pass_ctx, print_kv, print_table


@click.group()
def library() -> None:
    """Create, list, inspect and delete libraries."""


@library.command("create")
@click.argument("name")
@pass_ctx
def library_create(ctx: Ctx, name: str) -> None:
    """Create a library."""
    ctx.out(ctx.call("action:libraries.create.input.v1", {"name": name}),
            lambda r: click.echo(f"created library {r['id']} ({r['name']})"))


@library.command("list")
@pass_ctx
def library_list(ctx: Ctx) -> None:
    """List libraries."""
    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no libraries (create one with `sd library create NAME`)")
            return
        print_table([{**r, "created": fmt_time(r["created_at"])} for r in rows],
                    ["id", "name", "created"])
    ctx.out(ctx.call("query:libraries.list.v1"), human)


@library.command("info")
@click.argument("library_id")
@pass_ctx
def library_info(ctx: Ctx, library_id: str) -> None:
    """Show one library."""
    ctx.out(ctx.call("query:libraries.info.v1", {"id": library_id}), print_kv)


@library.command("delete")
@click.argument("library_id")
@pass_ctx
def library_delete(ctx: Ctx, library_id: str) -> None:
    """Delete a library and everything in it."""
    ctx.out(ctx.call("action:libraries.delete.input.v1", {"id": library_id}),
            lambda r: click.echo(f"deleted library {r['deleted']}"))
