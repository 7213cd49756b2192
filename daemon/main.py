"""``sd-daemon``: run the Core and serve it on a Unix socket until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from daemon.config import DaemonConfig, default_data_dir, default_socket_path
from daemon.core import Core
from daemon.errors import SdError
from daemon.jobs.types import JobType
from daemon.logging_setup import setup_logging

log = logging.getLogger("sd.daemon")


async def serve(config: DaemonConfig, job_types: Iterable[JobType] = ()) -> int:
    """Run until SIGTERM/SIGINT or ``action:core.shutdown.input.v1``; returns the exit code."""
    from rpc.server import RpcServer, prepare_socket_path

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    prepare_socket_path(config.socket_path)  # refuse early if another daemon serves it
    core = await Core.new_with_config(config.data_dir, config, job_types=job_types)
    core.on_shutdown_request(stop.set)
    server = RpcServer(core.dispatcher, config.socket_path, max_line=config.max_line_bytes)
    try:
        await server.start()
    except BaseException:
        await core.shutdown()
        raise
    log.info("sd daemon %s ready (pid %d, data dir %s)", core.version, os.getpid(), config.data_dir)
    await stop.wait()
    log.info("shutting down")
    # 1. Stop accepting; in-flight requests finish; connections close; socket removed.
    await server.stop()
    # 2. Jobs pause at a checkpoint, extensions clean up, databases close.
    await core.shutdown()
    log.info("stopped")
    return 0


def make_command(job_types: Iterable[JobType] = ()) -> click.Command:
    """The ``sd-daemon`` command; embedders pass their own native job types."""
    types = list(job_types)

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                  help="Data directory [env SD_DATA_DIR; default $XDG_DATA_HOME/sd]")
    @click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
                  help="Socket path [env SD_SOCKET; default $XDG_RUNTIME_DIR/sd/sd.sock "
                       "or <data-dir>/sd.sock]")
    @click.option("--log-level", default="info", show_default=True,
                  type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
    @click.option("--bundled-extensions", type=click.Path(path_type=Path, file_okay=False),
                  default=None, envvar="SD_BUNDLED_EXTENSIONS",
                  help="Install and load every built extension in this directory at start")
    @click.option("--max-running-jobs", type=click.IntRange(min=1), default=None,
                  help="Jobs running at once (default: CPU cores)")
    def command(data_dir: Path | None, socket_path: Path | None, log_level: str,
                bundled_extensions: Path | None, max_running_jobs: int | None) -> None:
        """Run the sd daemon in the foreground."""
        setup_logging(log_level)
        data_dir = (data_dir or default_data_dir()).expanduser().resolve()
        socket_path = (socket_path or default_socket_path(data_dir)).expanduser().absolute()
        extra = {} if max_running_jobs is None else {"max_running_jobs": max_running_jobs}
        config = DaemonConfig(data_dir=data_dir, socket_path=socket_path, log_level=log_level,
                              bundled_extensions=bundled_extensions, **extra)  # type: ignore[arg-type]
        try:
            import uvloop
            code = uvloop.run(serve(config, types))
        except SdError as e:
            log.error("%s", e.message)
            sys.exit(1)
        sys.exit(code)

    return command


main = make_command()


if __name__ == "__main__":
    main()
