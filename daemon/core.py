"""The Core: owns the config, the event bus, the libraries, jobs and extensions.

No module-level state: two Cores on two data dirs can live in one process.
A Core holds an exclusive lock on its data dir for its whole life. It knows
nothing of the layer above: the composition root (``daemon.app``) builds the
dispatcher and the plugin manager around it and attaches the latter.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from daemon import __version__, errors
from daemon.config import DaemonConfig
from daemon.events import EventBus
from daemon.extensions.manager import ExtensionInfo, PluginManager
from daemon.extensions.triggers import TriggerService
from daemon.jobs.context import ContextRegistry
from daemon.jobs.types import JobRegistry, JobType
from daemon.libraries.manager import LibraryManager
from daemon.locations import JOB_TYPES as BUILTIN_JOB_TYPES
from daemon.locations.watch import WatchService
from daemon.metrics import RequestMetrics, Snapshot

log = logging.getLogger("sd.core")


class Core:
    """Open with ``await Core.open(config)`` (``daemon.app.open_app`` does the rest);
    close with ``await core.shutdown()``."""

    def __init__(self, config: DaemonConfig, lock_file: IO[bytes]) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.version = __version__
        self.started_at = time.time()
        self._lock_file = lock_file
        self.events = EventBus(asyncio.get_running_loop(), config.subscriber_queue,
                               config.subscriber_drop_limit)
        self.job_types = JobRegistry()
        self.job_contexts = ContextRegistry()
        self.job_slots = asyncio.Semaphore(config.max_running_jobs)
        self.libraries = LibraryManager(config.data_dir / "libraries", self.events,
                                        self.job_types, self.job_slots, self.job_contexts)
        self.watches = WatchService(self.events, config.max_watches_per_location,
                                    config.watch_retry_s)
        self.libraries.before_close.append(self.watches.stop_library)
        self.plugin_manager: PluginManager | None = None
        self.requests = RequestMetrics()  # filled by the socket server's JSON-RPC layer
        self.triggers: TriggerService | None = None
        self._closed = False
        self._jobs_started = False
        self._shutdown_callbacks: list[Callable[[], None]] = []

    @classmethod
    async def open(cls, config: DaemonConfig, *, job_types: Iterable[JobType] = ()) -> Core:
        """Lock the data dir, register job types and open every library; no job runs yet.

        ``job_types`` are registered before any job is recovered or started, so an
        embedding program's own job types resume after a restart like built-in ones.
        """
        config.data_dir.mkdir(parents=True, exist_ok=True)
        core = cls(config, _lock_data_dir(config.data_dir))
        try:
            for job_type in (*BUILTIN_JOB_TYPES, *job_types):
                core.job_types.register(job_type)
            await core.libraries.load_all()
        except BaseException:
            await core.shutdown()
            raise
        return core

    def attach_plugins(self, plugins: PluginManager) -> None:
        self.plugin_manager = plugins
        self.triggers = TriggerService(self.events, plugins, self.libraries)

    def extension_info(self, ext_id: str) -> ExtensionInfo:
        """An extension's info with the live state of its triggers."""
        if self.plugin_manager is None:
            raise errors.InvalidState("extensions are not available in this daemon")
        info = self.plugin_manager.info(ext_id)
        if self.triggers is not None and info.manifest is not None:
            info.triggers = self.triggers.describe(ext_id, info.manifest.triggers)
        return info

    async def start_jobs(self) -> None:
        """Recover and start every library's jobs, then those paused for a missing extension."""
        await self.libraries.start_jobs()
        self._jobs_started = True
        if self.triggers is not None:
            self.triggers.start()
        if self.plugin_manager is not None:
            for ext_id in await self.plugin_manager.list_plugins():
                await self.resume_extension_jobs(ext_id)
        await self.watches.start_all(self.libraries.list())

    def status(self) -> dict[str, object]:
        return {
            "version": self.version,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "data_dir": str(self.data_dir),
            "libraries": len(self.libraries),
            "unavailable_libraries": self.libraries.unavailable_count,
            "running_jobs": len(self.job_contexts),
            "extensions": 0 if self.plugin_manager is None else self.plugin_manager.loaded_count(),
            "subscribers": self.events.subscriber_count,
        }

    async def metrics_snapshot(self) -> Snapshot:
        """The figures ``sd metrics`` prints (``daemon.metrics.render``)."""
        by_state: dict[str, int] = {}
        for lib in self.libraries.list():
            try:
                counts = await lib.jobs.count_by_status()
            except Exception as e:  # noqa: BLE001 - one bad library must not hide the rest
                log.warning("metrics: cannot count the jobs of library %s: %s", lib.id, e)
                continue
            for state, n in counts.items():
                by_state[state] = by_state.get(state, 0) + n
        pm = self.plugin_manager
        return Snapshot(
            started_at=self.started_at, requests=self.requests, jobs_by_state=by_state,
            running_jobs=len(self.job_contexts), libraries=len(self.libraries),
            extensions_loaded=0 if pm is None else pm.loaded_count(),
            subscribers=self.events.subscriber_count, events_dropped=self.events.dropped_total,
            subscribers_disconnected=self.events.disconnected_total,
            extensions=[] if pm is None else pm.stats_views())

    async def resume_extension_jobs(self, extension_id: str) -> None:
        """Jobs paused because the extension was unloaded or missing continue, in every library."""
        if not self._jobs_started:
            return  # at start-up: done once the job managers have recovered
        for lib in self.libraries.list():
            n = await lib.jobs.resume_extension_jobs(extension_id)
            if n:
                log.info("resumed %d job(s) of extension %s in library %s", n, extension_id, lib.id)

    def on_shutdown_request(self, callback: Callable[[], None]) -> None:
        """``callback`` runs when a client asks the daemon to stop."""
        self._shutdown_callbacks.append(callback)

    def request_shutdown(self) -> None:
        for callback in self._shutdown_callbacks:
            asyncio.get_running_loop().call_soon(callback)

    async def shutdown(self) -> None:
        """Stop in order; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        # 0. No more live changes: watches and triggers stop before the databases close.
        await self.watches.close()
        if self.triggers is not None:
            await self.triggers.close()
        # 1. Running jobs are asked to pause at a checkpoint; databases close after.
        await self.libraries.close_all(self.config.shutdown_grace_s)
        # 2. Extensions get plugin_cleanup once no job of theirs runs any more.
        if self.plugin_manager is not None:
            await self.plugin_manager.shutdown()
        # 3. The data dir is free for the next Core.
        self._lock_file.close()
        log.info("core shut down")


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    f = open(data_dir / "sd.lock", "a+b")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().decode(errors="replace").strip() or "another process"
        f.close()
        raise errors.DataDirLocked(
            f"data dir {data_dir} is in use by {holder}; stop that daemon first") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}".encode())
    f.flush()
    return f
