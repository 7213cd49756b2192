"""``sd-daemon``: the process entry point; runs the app (``daemon.app``) on a Unix socket until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from daemon import systemd
from daemon.app import open_app
from daemon.config import (
    DaemonConfig,
    default_data_dir,
    default_socket_path,
    load_config,
    resolve_group,
)
from daemon.core import Core
from daemon.errors import SdError
from daemon.jobs.types import JobType
from daemon.logging_setup import setup_logging
from rpc.server import RpcServer, prepare_socket_path

log = logging.getLogger("sd.daemon")


async def serve(config: DaemonConfig, job_types: Iterable[JobType] = ()) -> int:
    """Run until SIGTERM/SIGINT or ``action:core.shutdown.input.v1``; returns the exit code.

    Under systemd (``docs/service.md``) it also serves a socket-activated listener,
    reports readiness, status and stopping, and pings the watchdog.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    notifier = systemd.Notifier.from_env()
    background: list[asyncio.Task[None]] = []
    # The watchdog runs from the start: opening the Core can take a while, but never
    # blocks this loop.
    if (interval := systemd.watchdog_interval()) is not None:
        background.append(asyncio.ensure_future(systemd.watchdog(notifier, interval)))
    try:
        # A socket systemd already listens on (sd.socket) replaces binding our own.
        listener = systemd.activated_socket()
        socket_path = config.socket_path
        if listener is None:
            prepare_socket_path(socket_path, config.socket_gid)  # refuse early if in use
        elif isinstance(name := listener.getsockname(), str) and name.startswith("/"):
            socket_path = Path(name)
        app = await open_app(config.data_dir, config, job_types=job_types)
        core = app.core
        core.on_shutdown_request(stop.set)
        server = RpcServer(app.dispatcher, socket_path, max_line=config.max_line_bytes,
                           allowed_gid=config.socket_gid)
        try:
            await server.start(listener)
        except BaseException:
            await core.shutdown()
            raise
        # Accepting connections and the Core is open: only now is the service "started".
        status = _status_line(core)
        notifier.notify("READY=1", f"STATUS={status}")
        background.append(asyncio.ensure_future(
            systemd.report_status(notifier, lambda: _status_line(core), every=1.0, sent=status)))
        log.info("sd daemon %s ready (pid %d, data dir %s)",
                 core.version, os.getpid(), config.data_dir)
        await stop.wait()
        log.info("shutting down")
        notifier.notify("STOPPING=1", "STATUS=stopping: pausing jobs")
        # 1. Stop accepting; in-flight requests finish; connections close; socket removed.
        await server.stop()
        # 2. Jobs pause at a checkpoint, extensions clean up, databases close.
        await core.shutdown()
        log.info("stopped")
        return 0
    finally:
        for task in background:
            task.cancel()
        notifier.close()


def _status_line(core: Core) -> str:
    s = core.status()
    return (f"{s['libraries']} libraries, {s['running_jobs']} jobs running, "
            f"{s['extensions']} extensions")


def make_command(job_types: Iterable[JobType] = ()) -> click.Command:
    """The ``sd-daemon`` command; embedders pass their own native job types."""
    types = list(job_types)

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                  help="Data directory [env SD_DATA_DIR; default $XDG_DATA_HOME/sd]")
    @click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
                  help="Socket path [env SD_SOCKET; default $XDG_RUNTIME_DIR/sd/sd.sock "
                       "or <data-dir>/sd.sock]")
    @click.option("--socket-group", envvar="SD_SOCKET_GROUP", default=None, metavar="GROUP",
                  help="Also let members of this group (name or gid) use the socket "
                       "(mode 0660) [env SD_SOCKET_GROUP]")
    @click.option("--log-level", default="info", show_default=True,
                  type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
    @click.option("--bundled-extensions", type=click.Path(path_type=Path, file_okay=False),
                  default=None, envvar="SD_BUNDLED_EXTENSIONS",
                  help="Install and load every built extension in this directory at start")
    @click.option("--max-running-jobs", type=click.IntRange(min=1), default=None,
                  help="Jobs running at once (default: CPU cores)")
    @click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                  default=None, envvar="SD_CONFIG",
                  help="JSON file of settings (e.g. extension_limits); options override it")
    def command(data_dir: Path | None, socket_path: Path | None, log_level: str,
                bundled_extensions: Path | None, max_running_jobs: int | None,
                config_file: Path | None, socket_group: str | None) -> None:
        """Run the sd daemon in the foreground."""
        setup_logging(log_level)
        data_dir = (data_dir or default_data_dir()).expanduser().resolve()
        socket_path = (socket_path or default_socket_path(data_dir)).expanduser().absolute()
        overrides: dict[str, object] = {"data_dir": data_dir, "socket_path": socket_path,
                                        "log_level": log_level}
        if bundled_extensions is not None:
            overrides["bundled_extensions"] = bundled_extensions
        if max_running_jobs is not None:
            overrides["max_running_jobs"] = max_running_jobs
        if socket_group is not None:
            try:
                overrides["socket_gid"] = resolve_group(socket_group)
            except KeyError:
                raise click.BadParameter(f"no group {socket_group!r}",
                                         param_hint="--socket-group") from None
        try:
            config = load_config(config_file, overrides)
        except SdError as e:
            raise click.BadParameter(e.message, param_hint="--config") from None
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
