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
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec

from daemon.errors import (
    ConnectError,
    InvalidParams,
    JobCancelled,
    JobFailed,
    LibraryNotFound,
    SdError,
)
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
    message = name_flags(err.message) if isinstance(err, InvalidParams) else err.message
    click.echo(f"error: {message}", err=True)
    sys.exit(exit_code_for(err))


def name_flags(message: str) -> str:
    """The one place payload field names become the flags the user typed: in an error
    about the arguments of the running command, ``location_id`` (or `` `$.location_id` ``)
    reads ``--location``. A field is the name of the option that fills it."""
    cctx = click.get_current_context(silent=True)
    if cctx is None:
        return message
    argv = sys.argv[1:]
    flags: dict[str, str] = {}
    for param in cctx.command.params:
        if isinstance(param, click.Option) and param.name and param.name != "library":
            opts = [o for o in param.opts if o.startswith("--")] or param.opts
            typed = [o for o in param.opts
                     if any(a == o or a.startswith(o + "=") for a in argv)]
            flags[param.name] = (typed or opts)[0]
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    field = re.compile(rf"`?\$\.({names})`?(?![\w.])|(?<![\w$.-])({names})(?![\w-])")
    return field.sub(lambda m: flags[m.group(1) or m.group(2)], message)


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


def percent(progress: float) -> int:
    """A job's progress as the whole percent done, rounded down like the jobs' own
    messages ("26% complete" until 27% is reached); the slack absorbs float32 error."""
    return max(0, min(100, int(progress * 100 + 1e-4)))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


# --- libraries ------------------------------------------------------------------------------
LIBRARY_HELP = "Library: a name, id or id prefix (default: the only one) [env SD_LIBRARY]"


def _complete_library(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of ``--library``: the names (and ids) of the daemon's libraries."""
    from click.shell_completion import CompletionItem

    root = ctx.find_root()
    socket = root.params.get("socket")

    async def names() -> list[dict[str, Any]]:
        async with await Client.connect(socket) as c:
            return await c.call("query:libraries.list.v1")  # type: ignore[no-any-return]
    try:
        libs = asyncio.run(asyncio.wait_for(names(), 2))
    except (SdError, OSError, TimeoutError):
        return []
    items = [CompletionItem(lib["name"], help=lib["id"]) for lib in libs
             if lib["name"].startswith(incomplete) and " " not in lib["name"]]
    return items + [CompletionItem(lib["id"], help=lib["name"]) for lib in libs
                    if incomplete and lib["id"].startswith(incomplete)]


def library_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--library``/``-l``: a name, id or id prefix; defaults to $SD_LIBRARY, else the
    only library there is."""
    @click.option("--library", "-l", "library", envvar="SD_LIBRARY", default=None,
                  metavar="LIBRARY", help=LIBRARY_HELP, shell_complete=_complete_library)
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def _listing(libs: list[dict[str, Any]]) -> str:
    shown = libs[:20]
    lines = [f"  {lib['id']}  {lib['name']}" for lib in shown]
    if len(libs) > len(shown):
        lines.append(f"  ... and {len(libs) - len(shown)} more (sd library list)")
    return "\n".join(lines)


def pick_library(libs: list[dict[str, Any]], spec: str | None) -> str:
    """The id of the library ``spec`` names (an id, a name, or a unique id prefix), or of
    the only library when ``spec`` is None. Errors list the candidates and the flag."""
    if not spec:
        if len(libs) == 1:
            return str(libs[0]["id"])
        if not libs:
            raise LibraryNotFound("no library exists yet; create one with `sd library create NAME`")
        raise SdError(f"{len(libs)} libraries exist; choose one with -l/--library NAME "
                      f"(or SD_LIBRARY):\n{_listing(libs)}")
    for lib in libs:
        if lib["id"] == spec:
            return spec
    for matches in ([lib for lib in libs if lib["name"] == spec],
                    [lib for lib in libs if lib["name"].casefold() == spec.casefold()],
                    [lib for lib in libs if lib["id"].startswith(spec.lower())]):
        if len(matches) == 1:
            return str(matches[0]["id"])
        if matches:
            raise SdError(f"{len(matches)} libraries match {spec!r}; choose one by id with "
                          f"-l/--library ID:\n{_listing(matches)}")
    if not libs:
        raise LibraryNotFound(f"no library {spec!r}: there are no libraries yet; create one "
                              f"with `sd library create NAME`")
    raise LibraryNotFound(f"no library {spec!r} (by name, id or id prefix); the libraries "
                          f"are:\n{_listing(libs)}")


async def resolve_library(client: Client, library: str | None) -> str:
    """``library`` (name, id or id prefix; None: the only one) as a library id."""
    return pick_library(await client.call("query:libraries.list.v1"), library)


# --- entries --------------------------------------------------------------------------------
def all_entries(ctx: Ctx, library: str | None, query: dict[str, Any], limit: int) -> list[Any]:
    """Follow ``next_cursor`` until ``limit`` entries (0: all) are in."""
    out: list[Any] = []
    stream_entries(ctx, library, query, limit, out.extend)
    return out


def stream_entries(ctx: Ctx, library: str | None, query: dict[str, Any], limit: int,
                   emit: Callable[[list[Any]], None]) -> int:
    """Follow ``next_cursor`` until ``limit`` entries (0: all) are in, handing each page
    to ``emit`` as it arrives (nothing is held); returns the number of entries."""
    async def go(c: Client) -> int:
        lib = await resolve_library(c, library)
        n = 0
        cursor = None
        while True:
            page_size = 1000 if not limit else min(1000, limit - n)
            page = await c.call("query:entries.list.v1",
                                {**query, "cursor": cursor, "limit": page_size}, lib)
            emit(page["entries"])
            n += len(page["entries"])
            cursor = page["next_cursor"]
            if cursor is None or (limit and n >= limit):
                return n
    return ctx.run(go)


class EntryLines:
    """Entries as aligned lines, written page by page: the columns' widths come from the
    first page (a wider value later just pushes its line), never from measuring them all."""

    COLUMNS = ("id", "location_id", "kind", "size", "cas_id", "path")

    def __init__(self) -> None:
        self.widths: list[int] | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        cells = [(str(r["id"]), str(r["location_id"]), r["kind"],
                  fmt_size(r["size"]) if r["kind"] == "file" else "", r["cas_id"] or "",
                  r["path"]) for r in rows]
        if self.widths is None:
            if not cells:
                return
            self.widths = [max(len(h), *(len(c[i]) for c in cells))
                           for i, h in enumerate(self.COLUMNS[:-1])]
            cells.insert(0, self.COLUMNS)
        w = self.widths
        right = (True, True, False, True, False)
        out = []
        for c in cells:
            out.append("  ".join([*(v.rjust(w[i]) if right[i] else v.ljust(w[i])
                                    for i, v in enumerate(c[:-1])), c[-1]]))
        try:
            sys.stdout.write("\n".join(out) + "\n")
        except BrokenPipeError:  # `sd entries ls | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)


def print_entries(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no entries")
        return
    print_table([{**r, "size": fmt_size(r["size"]) if r["kind"] == "file" else ""} for r in rows],
                ["id", "location_id", "kind", "size", "cas_id", "path"])
