"""``sd tag ...``: create tags, put them on entries, and list what is tagged."""

from __future__ import annotations

from typing import Any

import click

from rpc.cli_common import Ctx, all_entries, library_option, pass_ctx, print_entries, print_table


@click.group()
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
        print_table(rows, ["id", "name", "entries", "color"])
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
    ctx.out(all_entries(ctx, library, {"tag": name, "location_id": location_id}, 0),
            print_entries)


@tag.command("delete")
@click.argument("name")
@library_option
@pass_ctx
def tag_delete(ctx: Ctx, name: str, library: str | None) -> None:
    """Delete tag NAME (entries keep existing)."""
    ctx.out(ctx.lib_call(library, "action:tags.delete.input.v1", {"tag": name}),
            lambda r: click.echo(f"deleted tag {r['deleted']} ({name})"))
