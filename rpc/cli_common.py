"""What every ``sd`` command group shares: the context, output helpers, exit codes,
the ``--library`` option, and fetching entries page by page.

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
from rpc.client import Client

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONNECT, EXIT_JOB_FAILED, EXIT_JOB_CANCELLED, EXIT_JOB_PAUSED = range(7)
_EXIT_FOR_ERROR: dict[type[SdError], int] = {
    ConnectError: EXIT_CONNECT, JobFailed: EXIT_JOB_FAILED, JobCancelled: EXIT_JOB_CANCELLED}
EXIT_FOR_JOB_STATUS = {"completed": EXIT_OK, "failed": EXIT_JOB_FAILED,
                       "cancelled": EXIT_JOB_CANCELLED, "paused": EXIT_JOB_PAUSED}

T = TypeVar("T")
ENCODE = msgspec.json.Encoder().encode


def exit_code_for(err: SdError) -> int:
    for klass, code in _EXIT_FOR_ERROR.items():
        if isinstance(err, klass):
            return code
    return EXIT_ERROR


def fail(err: SdError) -> NoReturn:
    click.echo(f"error: {err.message}", err=True)
    sys.exit(exit_code_for(err))


class Ctx:
    """The root options, and calls to the daemon that turn errors into exit codes."""

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
            click.echo(ENCODE(result).decode())
        else:
            human(result)


pass_ctx = click.make_pass_decorator(Ctx)


def json_argument(text: str, param_hint: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint=param_hint) from None


# --- output ---------------------------------------------------------------------------------
def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    # Piped output is not cut to a terminal's width.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)


def print_kv(d: dict[str, Any]) -> None:
    width = max((len(k) for k in d), default=0)
    for k, v in d.items():
        if isinstance(v, (dict, list)):
            v = ENCODE(v).decode()
        click.echo(f"{k:<{width}}  {v}")


def fmt_time(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


# --- libraries ------------------------------------------------------------------------------
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


# --- entries --------------------------------------------------------------------------------
def all_entries(ctx: Ctx, library: str | None, query: dict[str, Any], limit: int) -> list[Any]:
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


def print_entries(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no entries")
        return
    print_table([{**r, "size": fmt_size(r["size"]) if r["kind"] == "file" else ""} for r in rows],
                ["id", "location_id", "kind", "size", "cas_id", "path"])
