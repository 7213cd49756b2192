"""``sd status``, ``sd call``, ``sd events``, ``sd daemon``: the daemon itself; and
``sd completion``: the shell completion script of the CLI."""

from __future__ import annotations

import sys
from typing import Any

import click

from daemon.errors import LibraryRequired, SdError
from rpc.cli_common import (
    ENCODE,
    Ctx,
    fail,
    fmt_time,
    json_argument,
    library_option,
    pass_ctx,
    print_kv,
    resolve_library,
)
from rpc.client import Client


@click.command()
@pass_ctx
def status(ctx: Ctx) -> None:
    """Show the daemon's status."""
    ctx.out(ctx.call("query:core.status.v1"), print_kv)


@click.command()
@click.argument("method")
@click.argument("payload", required=False, default="{}")
@library_option
@pass_ctx
def call(ctx: Ctx, method: str, payload: str, library: str | None) -> None:
    """Call any operation by name, with a JSON payload.

    \b
    sd call query:test.ping.v1 '{"hello": "world"}'
    sd call query:jobs.types.v1 -l Photos

    An operation that works in a library gets --library, else the only library.
    """
    value = json_argument(payload, "PAYLOAD")

    async def go(c: Client) -> Any:
        if library:
            return await c.call(method, value, await resolve_library(c, library))
        try:
            return await c.call(method, value)
        except LibraryRequired:
            pass  # rejected before it ran: safe to send again with a library
        try:
            lib = await resolve_library(c, None)
        except SdError as e:
            how = "" if "-l/--library" in e.message else " (-l/--library)"
            raise LibraryRequired(f"{method} works in a library{how}: {e.message}") from None
        return await c.call(method, value, lib)
    click.echo(ENCODE(ctx.run(go)).decode())


@click.command("events")
@click.option("--kind", "kinds", multiple=True, help="Only these event kinds (repeatable)")
@click.option("--library", "-l", default=None, metavar="LIBRARY",
              help="Only events of this library (name, id or id prefix)")
@pass_ctx
def events(ctx: Ctx, kinds: tuple[str, ...], library: str | None) -> None:
    """Stream events until interrupted (JSON lines with --json)."""
    async def go(c: Client) -> None:
        lib = await resolve_library(c, library) if library else None
        async for ev in c.events(list(kinds) or None, lib):
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


@click.command("metrics")
@click.option("--openmetrics", is_flag=True, help="OpenMetrics text instead of Prometheus")
@pass_ctx
def metrics(ctx: Ctx, openmetrics: bool) -> None:
    """Print the daemon's figures in the Prometheus text format.

    Requests, jobs, event drops and each extension's costs; for node_exporter's
    textfile collector, see docs/service.md.
    """
    r = ctx.call("query:core.metrics.v1",
                 {"format": "openmetrics" if openmetrics else "prometheus"})
    ctx.out(r, lambda r: click.echo(r["text"], nl=False))


@click.group()
def daemon() -> None:
    """Control the daemon."""


@daemon.command("stop")
@pass_ctx
def daemon_stop(ctx: Ctx) -> None:
    """Ask the daemon to shut down cleanly."""
    ctx.out(ctx.call("action:core.shutdown.input.v1"), lambda r: click.echo("daemon stopping"))


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(cctx: click.Context, shell: str) -> None:
    """Print the script that completes sd commands in a shell.

    \b
    bash:  eval "$(sd completion bash)"     in ~/.bashrc
    zsh:   eval "$(sd completion zsh)"      in ~/.zshrc
    fish:  sd completion fish > ~/.config/fish/completions/sd.fish
    """
    from click.shell_completion import get_completion_class

    klass = get_completion_class(shell)
    assert klass is not None  # click ships all three
    root = cctx.find_root()
    click.echo(klass(root.command, {}, root.info_name or "sd", "_SD_COMPLETE").source())
