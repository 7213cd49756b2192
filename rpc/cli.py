"""``sd``: the command-line client of the daemon.

The root group and the one place where every command group is attached. Each
group lives in a module of its own (``cli_*.py``); what they share is in
``cli_common`` (exit codes are documented there).
"""

from __future__ import annotations

from pathlib import Path

import click

from rpc import cli_core, cli_entries, cli_ext, cli_jobs, cli_library, cli_locations, cli_tags
from rpc.cli_common import Ctx
from rpc.client import default_socket

EPILOG = """\b
Examples:
  sd library create Photos
  sd location add ~/Pictures --identify --wait
  sd entries ls --location 1 --ext jpg
  sd job list -l Photos
  sd --json job watch JOB_ID | jq .progress
  eval "$(sd completion bash)"      # completion (also zsh, fish)
"""


class Root(click.Group):
    """The root group; ``--json`` is its option but may also follow the command
    (``sd job list --json``), as people type it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--json" in args[:end]:
            args = ["--json", *(a for a in args[:end] if a != "--json"), *args[end:]]
        return super().parse_args(ctx, args)


@click.group(cls=Root, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})
@click.option("--socket", type=click.Path(path_type=Path), envvar="SD_SOCKET", default=None,
              help="Daemon socket [env SD_SOCKET]")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON results (for scripts)")
@click.pass_context
def cli(ctx: click.Context, socket: Path | None, as_json: bool) -> None:
    """Talk to the sd daemon.

    Commands that work in a library take -l/--library (a name, an id or a
    unique id prefix; env SD_LIBRARY) and default to the only library. --json
    may go before or after the command; `sd COMMAND --help` tells more.
    """
    ctx.obj = Ctx(socket or default_socket(), as_json)


for command in (cli_core.status, cli_core.call, cli_core.events, cli_core.daemon,
                cli_core.completion, cli_core.metrics,
                cli_library.library, cli_jobs.job, cli_ext.ext, cli_locations.location,
                cli_entries.entries, cli_tags.tag):
    cli.add_command(command)


def main() -> None:
    cli()
