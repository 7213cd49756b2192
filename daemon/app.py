"""The composition root: the one place where the layers are wired together.

The domain (everything else under ``daemon/``) never imports ``rpc``; this module
and the process entry point (``daemon.main``) are the only ones allowed to
(an import-linter contract in pyproject.toml keeps it so). Here the Core is
opened, the dispatcher built on it, and the plugin manager given the dispatch
callable, never the Core.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from daemon.config import DaemonConfig, default_socket_path
from daemon.core import Core
from daemon.extensions.manager import PluginManager
from daemon.jobs.types import JobType
from rpc.dispatch import Dispatcher


@dataclass(eq=False)
class App:
    """A running Core with its dispatcher; ``shutdown`` closes it."""

    core: Core
    dispatcher: Dispatcher
    plugins: PluginManager

    async def shutdown(self) -> None:
        await self.core.shutdown()


async def open_app(data_dir: Path | str, config: DaemonConfig | None = None, *,
                   job_types: Iterable[JobType] = (), load_extensions: bool = True) -> App:
    """Open (or create) the data dir with its libraries, jobs and extensions."""
    data_dir = Path(data_dir).resolve()
    if config is None:
        config = DaemonConfig(data_dir=data_dir, socket_path=default_socket_path(data_dir))
    core = await Core.open(config, job_types=job_types)
    try:
        dispatcher = Dispatcher(core)
        plugins = PluginManager(
            bus=core.events, dispatch=dispatcher.execute_from_thread,
            plugin_dir=core.data_dir / "extensions", job_types=core.job_types,
            contexts=core.job_contexts, limits=config.extension_limits,
            on_loaded=core.resume_extension_jobs, read_into=dispatcher.read_entry_into)
        core.attach_plugins(plugins)
        if load_extensions:
            await plugins.start(config.bundled_extensions)
        await core.start_jobs()
    except BaseException:
        await core.shutdown()
        raise
    return App(core, dispatcher, plugins)
