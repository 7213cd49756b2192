"""``sd library ...``: create, list, inspect and delete libraries."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from rpc.cli_common import (
    EXIT_ERROR,
    Ctx,
    fmt_time,
    pass_ctx,
    print_kv,
    print_table,
    resolve_library,
)
from rpc.client import Client


@click.group()
def library() -> None:
    """Create, list, inspect, check and delete libraries."""


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
        columns = ["id", "name", "created", "state"]
        if any(r.get("error") for r in rows):
            columns.append("error")  # why a library is unavailable, naming its file
        print_table([{**r, "created": fmt_time(r["created_at"] or None)} for r in rows], columns)
    ctx.out(ctx.call("query:libraries.list.v1"), human)


def _by_library(method: str) -> Callable[[Ctx, str | None], Any]:
    """Call ``method`` with ``{"id": ...}`` of the library named (name, id or id prefix)."""
    def run(ctx: Ctx, spec: str | None) -> Any:
        async def go(c: Client) -> Any:
            return await c.call(method, {"id": await resolve_library(c, spec)})
        return ctx.run(go)
    return run


@library.command("info")
@click.argument("library", required=False)
@pass_ctx
def library_info(ctx: Ctx, library: str | None) -> None:
    """Show one library.

    LIBRARY is a name, an id or a unique id prefix (default: the only library).
    """
    ctx.out(_by_library("query:libraries.info.v1")(ctx, library), print_kv)


@library.command("check")
@click.argument("library", required=False)
@pass_ctx
def library_check(ctx: Ctx, library: str | None) -> None:
    """Check a library with SQLite's integrity check (exit 1 if damaged).

    LIBRARY is a name, an id or a unique id prefix (default: the only library).
    """
    result = _by_library("query:libraries.check.v1")(ctx, library)

    def human(r: dict[str, Any]) -> None:
        if r["ok"]:
            click.echo(f"library {r['id']}: ok ({r['path']}, {r['state']})")
            return
        click.echo(f"library {r['id']}: damaged ({r['path']}, now {r['state']})")
        for problem in r["problems"]:
            click.echo(f"  {problem}")
    ctx.out(result, human)
    if not result["ok"]:
        sys.exit(EXIT_ERROR)


@library.command("delete")
@click.argument("library")
@pass_ctx
def library_delete(ctx: Ctx, library: str) -> None:
    """Delete a library and everything in it.

    LIBRARY is a name, an id or a unique id prefix.
    """
    ctx.out(_by_library("action:libraries.delete.input.v1")(ctx, library),
            lambda r: click.echo(f"deleted library {r['deleted']}"))
