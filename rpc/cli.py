"""``sd``: the command-line client of the daemon.

Exit codes (the one place they are decided):
  0 ok · 1 the daemon answered with an error · 2 usage error ·
  3 cannot connect to the daemon · 4 the job failed · 5 the job was cancelled ·
  6 the job paused
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec

from daemon.errors import ConnectError, JobCancelled, JobFailed, SdError
from rpc.client import Client, default_socket

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONNECT, EXIT_JOB_FAILED, EXIT_JOB_CANCELLED, EXIT_JOB_PAUSED = range(7)
T = TypeVar("T")
_enc = msgspec.json.Encoder()


def exit_code_for(err: SdError) -> int:
    if isinstance(err, ConnectError):
        return EXIT_CONNECT
    if isinstance(err, JobFailed):
        return EXIT_JOB_FAILED
    if isinstance(err, JobCancelled):
        return EXIT_JOB_CANCELLED
    return EXIT_ERROR


class Ctx:
    def __init__(self, socket: Path, json: bool) -> None:
        self.socket = socket
        self.json = json

    def run(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        async def go() -> T:
            async with await Client.connect(self.socket) as client:
                return await fn(client)
        try:
            return asyncio.run(go())
        except SdError as e:
            fail(e)
        except KeyboardInterrupt:
            sys.exit(130)

    def call(self, method: str, payload: Any = None, library: str | None = None) -> Any:
        return self.run(lambda c: c.call(method, payload, library))

    def lib_call(self, library: str | None, method: str, payload: Any) -> Any:
        """A library-scoped call; ``library`` None means the only library there is."""
        async def go(c: Client) -> Any:
            return await c.call(method, payload, await resolve_library(c, library))
        return self.run(go)

    def out(self, result: Any, human: Callable[[Any], None] | None = None) -> None:
        if self.json or human is None:
            click.echo(_enc.encode(result).decode())
        else:
            human(result)


def fail(err: SdError) -> NoReturn:
    click.echo(f"error: {err.message}", err=True)
    sys.exit(exit_code_for(err))


pass_ctx = click.make_pass_decorator(Ctx)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    # Piped output is not cut to a terminal's width.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)


def _kv(d: dict[str, Any]) -> None:
    width = max((len(k) for k in d), default=0)
    for k, v in d.items():
        if isinstance(v, (dict, list)):
            v = _enc.encode(v).decode()
        click.echo(f"{k:<{width}}  {v}")


def _ts(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", type=click.Path(path_type=Path), envvar="SD_SOCKET", default=None,
              help="Daemon socket [env SD_SOCKET]")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON results (for scripts)")
@click.pass_context
def cli(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """Talk to the sd daemon."""
    ctx.obj = Ctx(socket or default_socket(), as_json)


@cli.command()
@pass_ctx
def status(ctx: Ctx) -> None:
    """Show the daemon's status."""
    ctx.out(ctx.call("query:core.status.v1"), _kv)


@cli.command()
@click.argument("method")
@click.argument("payload", required=False, default="{}")
@click.option("--library", "-l", default=None, help="Library id for library-scoped operations")
@pass_ctx
def call(ctx: Ctx, method: str, payload: str, library: str | None) -> None:
    """Call any operation: sd call METHOD '{"json": "payload"}'."""
    try:
        value = msgspec.json.decode(payload)
    except msgspec.DecodeError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint="PAYLOAD") from None
    click.echo(_enc.encode(ctx.call(method, value, library)).decode())


# --- libraries ------------------------------------------------------------------------------
@cli.group()
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
        _table([{**r, "created": _ts(r["created_at"])} for r in rows], ["id", "name", "created"])
    ctx.out(ctx.call("query:libraries.list.v1"), human)


@library.command("info")
@click.argument("library_id")
@pass_ctx
def library_info(ctx: Ctx, library_id: str) -> None:
    """Show one library."""
    ctx.out(ctx.call("query:libraries.info.v1", {"id": library_id}), _kv)


@library.command("delete")
@click.argument("library_id")
@pass_ctx
def library_delete(ctx: Ctx, library_id: str) -> None:
    """Delete a library and everything in it."""
    ctx.out(ctx.call("action:libraries.delete.input.v1", {"id": library_id}),
            lambda r: click.echo(f"deleted library {r['deleted']}"))


# --- daemon ---------------------------------------------------------------------------------
@cli.group()
def daemon() -> None:
    """Control the daemon."""


@daemon.command("stop")
@pass_ctx
def daemon_stop(ctx: Ctx) -> None:
    """Ask the daemon to shut down cleanly."""
    ctx.out(ctx.call("action:core.shutdown.input.v1"), lambda r: click.echo("daemon stopping"))


def main() -> None:
    from rpc import cli_ext, cli_files, cli_jobs  # noqa: F401 - register the other commands

    cli()


def library_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--library``: defaults to $SD_LIBRARY, else the only library there is."""
    @click.option("--library", "-l", "library", envvar="SD_LIBRARY", default=None,
                  help="Library id [env SD_LIBRARY; default: the only library]")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


async def resolve_library(client: Client, library: str | None) -> str:
    if library:
        return library
    libs = await client.call("query:libraries.list.v1")
    if len(libs) == 1:
        return str(libs[0]["id"])
    if not libs:
        raise SdError("no library exists yet; create one with `sd library create NAME`")
    raise SdError("several libraries exist; choose one with --library ID")
