"""``sd status``, ``sd call``, ``sd events`` and ``sd daemon``: the daemon itself."""

from __future__ import annotations

import sys

import click

from daemon.errors import SdError
from rpc.cli_common import ENCODE, Ctx, fail, fmt_time, json_argument, pass_ctx, print_kv
from rpc.client import Client


@click.command()
@pass_ctx
def status(ctx: Ctx) -> None:
    """Show the daemon's status."""
    ctx.out(ctx.call("query:core.status.v1"), print_kv)


@click.command()
@click.argument("method")
@click.argument("payload", required=False, default="{}")
@click.option("--library", "-l", default=None, help="Library id for library-scoped operations")
@pass_ctx
def call(ctx: Ctx, method: str, payload: str, library: str | None) -> None:
    """Call any operation: sd call METHOD '{"json": "payload"}'."""
    value = json_argument(payload, "PAYLOAD")
    click.echo(ENCODE(ctx.call(method, value, library)).decode())


@click.command("events")
@click.option("--kind", "kinds", multiple=True, help="Only these event kinds (repeatable)")
@click.option("--library", "-l", default=None, help="Only events of this library")
@pass_ctx
def events(ctx: Ctx, kinds: tuple[str, ...], library: str | None) -> None:
    """Stream events until interrupted (JSON lines with --json)."""
    async def go(c: Client) -> None:
        async for ev in c.events(list(kinds) or None, library):
            if ctx.json:
                click.echo(ENCODE(ev).decode())
            else:
                rest = {k: v for k, v in ev.items() if k not in ("kind", "at")}
                click.echo(f"{fmt_time(ev['at'])} {ev['kind']:<18} {ENCODE(rest).decode()}")
            sys.stdout.flush()
        raise SdError("the daemon closed the event stream")
    try:
        ctx.run(go)
    except SdError as e:
        fail(e)


@click.group()
def daemon() -> None:
    """Control the daemon."""


@daemon.command("stop")
@pass_ctx
def daemon_stop(ctx: Ctx) -> None:
    """Ask the daemon to shut down cleanly."""
    ctx.out(ctx.call("action:core.shutdown.input.v1"), lambda r: click.echo("daemon stopping"))
