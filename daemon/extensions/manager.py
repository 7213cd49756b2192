"""The plugin manager: install, load, unload and reload extensions, and run their jobs.

Built from narrow dependencies (the event bus, the dispatch callable, the plugin
directory, the job registries) rather than the Core, then attached to the Core
as ``core.plugin_manager``.

Invariants:
- an extension is loaded again at daemon start iff it was loaded when the
  daemon stopped (``<plugin-dir>/loaded.json``);
- unloading asks the extension's running jobs to pause at their next check and
  waits for them; they stay paused with their checkpoint and resume by
  themselves when the extension is loaded again (as do jobs that found it
  missing);
- every guest call runs off the event loop, on a thread of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import wasmtime

from daemon import errors
from daemon.calls import EXTENSION, Caller, DispatchFn, ReadIntoFn
from daemon.config import ExtensionLimits
from daemon.events import EventBus, ExtensionFailed, ExtensionLoaded, ExtensionUnloaded
from daemon.extensions.host_functions import HostEnv, LogLimiter, RegisteredJob
from daemon.extensions.instance import GuestInstance
from daemon.extensions.manifest import Manifest, read_manifest
from daemon.extensions.policy import ExtensionPolicy
from daemon.extensions.runtime import (
    Compiled,
    WasmRuntime,
    check_module_abi,
    check_module_memory,
    job_export_ok,
    module_sha256,
)
from daemon.extensions.stats import StatsBook, StatsView
from daemon.extensions.triggers import TriggerInfo
from daemon.extensions.versions import compare_versions, previous_dir, recover, swap_in
from daemon.jobs.context import ContextRegistry, Interrupt, Interrupted, JobContext
from daemon.jobs.types import JobRegistry, JobType

log = logging.getLogger("sd.extensions")
_enc = msgspec.json.Encoder()
_json = msgspec.json.Decoder()
MAX_WASM_BYTES = 64 * 1024 * 1024


# The pause reason of a job whose extension's current version does not register its job.
UNREGISTERED = "job not registered"


class WasmJobInput(msgspec.Struct, forbid_unknown_fields=True):
    """Input of the ``wasm_job`` type (the seed's shape)."""

    extension_id: str
    export_fn: str
    state_json: str = "{}"


class JobCtxJson(msgspec.Struct):
    job_id: str
    library_id: str
    extension_id: str
    resumed: bool


class ExtensionInfo(msgspec.Struct):
    id: str
    state: str  # "loaded" | "failed" | "installed"
    manifest: Manifest | None
    jobs: list[dict[str, Any]]
    error: str | None = None
    module_bytes: int = 0
    load_ms: float | None = None
    from_cache: bool | None = None
    running_jobs: int = 0
    triggers: list[TriggerInfo] = []  # filled by the trigger service (``Core.extension_info``)
    module_sha256: str | None = None
    previous_version: str | None = None  # kept on disk for `sd ext rollback`


@dataclass(frozen=True, eq=False)
class Checked:
    """A module compiled (or taken from the cache) and checked against the ABI and its
    memory limit: an install compiles once and passes this on to the load."""

    wasm: bytes
    compiled: Compiled
    seconds: float  # spent compiling and checking


@dataclass(eq=False)
class Plugin:
    """A loaded (or failed) extension."""

    manifest: Manifest
    directory: Path
    module: wasmtime.Module | None = None
    policy: ExtensionPolicy | None = None
    jobs: dict[str, RegisteredJob] = field(default_factory=dict)
    main: GuestInstance | None = None
    main_lock: threading.Lock = field(default_factory=threading.Lock)
    job_slots: threading.BoundedSemaphore | None = None
    state: str = "loaded"
    error: str | None = None
    module_bytes: int = 0
    module_sha256: str = ""
    load_ms: float | None = None
    from_cache: bool | None = None
    log_limiter: LogLimiter = field(default_factory=LogLimiter)
    revoked: threading.Event = field(default_factory=threading.Event)
    # Bounds the extension's running jobs; taken before a global job slot (JobType.gate).
    gate: asyncio.Semaphore | None = None


class PluginManager:
    def __init__(self, *, bus: EventBus, dispatch: DispatchFn, plugin_dir: Path,
                 job_types: JobRegistry, contexts: ContextRegistry,
                 limits: ExtensionLimits,
                 on_loaded: Callable[[str], Awaitable[object]] | None = None,
                 read_into: ReadIntoFn | None = None) -> None:
        self.plugin_dir = plugin_dir
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._bus = bus
        self._dispatch = dispatch
        self._read_into = read_into
        self._contexts = contexts
        self.limits = limits
        self.runtime = WasmRuntime(plugin_dir / ".cache", limits.epoch_tick_ms)
        self._deadline_ticks = self.runtime.ticks(limits.time_slice_ms)
        self._on_loaded = on_loaded
        self._plugins: dict[str, Plugin] = {}
        self._lock = asyncio.Lock()
        self._replacing = asyncio.Lock()
        self.stats = StatsBook(plugin_dir / "stats.json")
        # Job names each extension registered in any version loaded here (jobs.json): a
        # job one no longer registers pauses for a rollback instead of failing.
        self._seen_jobs = self._read_seen_jobs()
        self._stats_saver: asyncio.Task[None] | None = None
        job_types.register(JobType(
            "wasm_job", True, WasmJobInput, self._run_job,
            "a job exported by a WebAssembly extension", owner=lambda i: i.extension_id,
            gate=self._job_gate, label=self.job_label, run_note=self.run_note))

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self, bundled: Path | None) -> None:
        """Install bundled extensions, then load what was loaded at the last stop."""
        self._stats_saver = asyncio.create_task(self._save_stats_regularly())
        await asyncio.to_thread(recover, self.plugin_dir)
        wanted = set(self._read_loaded())
        checked: dict[str, Checked] = {}  # the bundled ones, compiled by their install
        if bundled is not None and bundled.is_dir():
            for d in sorted(bundled.iterdir()):
                if (d / "manifest.json").exists():
                    try:
                        if self._newer_installed(d):
                            continue  # an upgrade is not undone by the bundled copy
                        m, c = await self._install(d, load=False)
                        checked[m.id] = c
                        wanted.add(m.id)
                    except errors.SdError as e:
                        log.error("bundled extension %s: %s", d.name, e.message)
        for ext_id in sorted(wanted):
            try:
                await self.load_plugin(ext_id, checked.pop(ext_id, None))
            except errors.SdError as e:
                log.error("extension %s failed to load: %s", ext_id, e.message)

    async def shutdown(self) -> None:
        for ext_id in list(self._plugins):
            plugin = self._plugins[ext_id]
            if plugin.state == "loaded":
                await self._cleanup(plugin)
        self._plugins.clear()
        self.runtime.close()
        if self._stats_saver is not None:
            self._stats_saver.cancel()
        await asyncio.to_thread(self.stats.save_if_dirty)

    async def _save_stats_regularly(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            await asyncio.to_thread(self.stats.save_if_dirty)

    # --- queries -----------------------------------------------------------------------------
    async def list_plugins(self) -> list[str]:
        """Ids of the loaded extensions."""
        return sorted(k for k, p in self._plugins.items() if p.state == "loaded")

    def loaded_count(self) -> int:
        return sum(1 for p in self._plugins.values() if p.state == "loaded")

    def installed(self) -> list[str]:
        return sorted(d.name for d in self.plugin_dir.iterdir()
                      if d.is_dir() and not d.name.startswith(".")
                      and (d / "manifest.json").exists())

    def _newer_installed(self, bundled: Path) -> bool:
        """Whether a newer version than the bundled one at ``bundled`` is installed."""
        try:
            theirs = read_manifest(bundled)
            ours = read_manifest(self.plugin_dir / theirs.id)
        except errors.SdError:
            return False
        return compare_versions(ours.version, theirs.version) > 0

    def _previous_version(self, ext_id: str) -> str | None:
        try:
            return read_manifest(previous_dir(self.plugin_dir, ext_id)).version
        except errors.SdError:
            return None

    def info(self, ext_id: str) -> ExtensionInfo:
        plugin = self._plugins.get(ext_id)
        if plugin is None:
            directory = self.plugin_dir / ext_id
            if not (directory / "manifest.json").exists():
                raise errors.NotFound(f"no extension {ext_id!r} is installed")
            try:
                manifest: Manifest | None = read_manifest(directory)
                error = None
            except errors.SdError as e:
                manifest, error = None, e.message
            return ExtensionInfo(ext_id, "installed", manifest, [], error,
                                 previous_version=self._previous_version(ext_id))
        running = len(self._running_contexts(ext_id))
        return ExtensionInfo(
            ext_id, plugin.state, plugin.manifest,
            [{"name": j.name, "export": j.export, "resumable": j.resumable}
             for j in plugin.jobs.values()],
            plugin.error, plugin.module_bytes, plugin.load_ms, plugin.from_cache, running,
            module_sha256=plugin.module_sha256 or None,
            previous_version=self._previous_version(ext_id))

    def stats_views(self, ext_id: str | None = None) -> list[StatsView]:
        """Each extension's figures since start and in total (one, if ``ext_id``)."""
        if ext_id is None:
            return self.stats.views()
        if ext_id not in self.stats.ids() and ext_id not in self._plugins \
                and not (self.plugin_dir / ext_id / "manifest.json").exists():
            raise errors.NotFound(f"no extension {ext_id!r} is installed")
        return [self.stats.of(ext_id).view(self.stats.started_at)]

    def triggering(self) -> list[tuple[str, Manifest, ExtensionPolicy]]:
        """Loaded extensions that declare triggers, with their policy."""
        return [(ext_id, p.manifest, p.policy) for ext_id, p in self._plugins.items()
                if p.state == "loaded" and p.manifest.triggers and p.policy is not None]

    def job_export(self, ext_id: str, job_name: str) -> str:
        """The export of a job an extension registered, by the job's registered name."""
        plugin = self._loaded(ext_id)
        job = plugin.jobs.get(job_name)
        if job is None:
            raise errors.NotFound(f"extension {ext_id} has no job {job_name!r}",
                                  {"jobs": sorted(plugin.jobs)})
        return job.export

    def run_note(self, inp: WasmJobInput) -> str | None:
        """What a run of a wasm job runs on: the version and module hash (transitions)."""
        plugin = self._plugins.get(inp.extension_id)
        if plugin is None or plugin.state != "loaded":
            return f"{inp.extension_id} not loaded"  # it pauses until it is
        return (f"{inp.extension_id} {plugin.manifest.version}, module sha256 "
                f"{plugin.module_sha256[:16]}")

    def job_label(self, inp: WasmJobInput) -> str:
        """``<extension>:<job>``: the name the extension registered for the export
        (the export's own name if the extension is not loaded or has no such job)."""
        plugin = self._plugins.get(inp.extension_id)
        name = inp.export_fn
        if plugin is not None:
            name = next((j.name for j in plugin.jobs.values() if j.export == inp.export_fn), name)
        return f"{inp.extension_id}:{name}"

    # --- install / load / unload -------------------------------------------------------------
    async def install(self, source: Path, *, load: bool = True) -> Manifest:
        """Validate an extension directory, copy it into the plugin directory, and load it.

        ``source`` is a directory holding manifest.json and the module, or a
        ``.wasm`` file with a manifest.json beside it. The same content already
        installed is left as it is.
        """
        manifest, _ = await self._install(source, load=load)
        return manifest

    async def _install(self, source: Path, *, load: bool) -> tuple[Manifest, Checked]:
        """``install``, which also returns the module it compiled (for a later load)."""
        source, manifest = _read_source(source)
        wasm = (source / manifest.wasm_file).read_bytes()
        if len(wasm) > MAX_WASM_BYTES:
            raise errors.ExtensionError(f"{manifest.wasm_file} is larger than {MAX_WASM_BYTES} bytes")
        # Compile and check the ABI before anything is copied; the load uses that module.
        checked = await asyncio.to_thread(self._check, wasm, str(source / manifest.wasm_file),
                                          manifest)
        dest = self.plugin_dir / manifest.id
        same = (dest / "manifest.json").exists() and \
            (dest / "manifest.json").read_bytes() == (source / "manifest.json").read_bytes() and \
            (dest / manifest.wasm_file).exists() and \
            module_sha256((dest / manifest.wasm_file).read_bytes()) == checked.compiled.sha256
        if not same and manifest.id in self.installed():
            # Over an installed version: as `upgrade` does (the old one kept, jobs in flight
            # continue); an older version only through `upgrade --force`.
            current = read_manifest(dest)
            order = compare_versions(manifest.version, current.version)
            if order < 0:
                raise errors.InvalidState(
                    f"{manifest.id} {manifest.version} is older than the installed "
                    f"{current.version}; use `sd ext upgrade --force` to go back to it")
            if load:
                await self._replace(manifest, source, f"install {manifest.version}", checked)
                return manifest, checked
            async with self._lock:
                was_loaded = self._plugins.get(manifest.id)
            if was_loaded is not None:
                await self.unload_plugin(manifest.id, remember=False, reason="upgrade")
            await self._swap_in(manifest, source, checked)
            log.info("installed extension %s %s (the version before it is kept)",
                     manifest.id, manifest.version)
        elif not same:
            await self._swap_in(manifest, source, checked)
            log.info("installed extension %s %s", manifest.id, manifest.version)
        if load:
            await self.load_plugin(manifest.id, checked)
        return manifest, checked

    async def _swap_in(self, manifest: Manifest, source: Path, checked: Checked) -> None:
        """Make ``source`` the installed version, with the module bytes that were checked."""
        await asyncio.to_thread(swap_in, self.plugin_dir, manifest.id, source,
                                ["manifest.json", manifest.wasm_file],
                                {manifest.wasm_file: checked.wasm})

    async def load_plugin(self, ext_id: str, checked: Checked | None = None) -> None:
        """Compile (or take from the cache), instantiate, and run ``plugin_init``.

        ``checked``: the installed module, already compiled and checked by its install."""
        async with self._lock:
            current = self._plugins.get(ext_id)
            if current is not None and current.state == "loaded":
                return
            directory = self.plugin_dir / ext_id
            if not (directory / "manifest.json").exists():
                raise errors.NotFound(f"no extension {ext_id!r} is installed in {self.plugin_dir}")
            manifest = read_manifest(directory)
            if manifest.id != ext_id:
                raise errors.ExtensionError(
                    f"manifest in {directory} has id {manifest.id!r}, not {ext_id!r}")
            plugin = Plugin(manifest, directory)
            try:
                await asyncio.to_thread(self._load_blocking, plugin, checked)
            except errors.SdError as e:
                plugin.state, plugin.error = "failed", e.message
                self._plugins[ext_id] = plugin
                self._bus.publish(ExtensionFailed(extension_id=ext_id, error=e.message))
                log.error("extension %s failed to load: %s", ext_id, e.message)
                raise
            self._register(plugin)
        if self._on_loaded is not None:
            await self._on_loaded(ext_id)

    def _register(self, plugin: Plugin) -> None:
        """Make ``plugin`` (its ``plugin_init`` done) the loaded one. Under ``self._lock``."""
        ext_id, manifest = plugin.manifest.id, plugin.manifest
        self._saw_jobs(ext_id, plugin.jobs)
        plugin.gate = asyncio.Semaphore(min(
            manifest.permissions.rate_limits.concurrent_jobs, self.limits.concurrent_jobs))
        self._plugins[ext_id] = plugin
        self._remember(ext_id, True)
        log.info("extension %s %s loaded (%d jobs, %.1f ms%s)", ext_id, manifest.version,
                 len(plugin.jobs), plugin.load_ms or 0, ", cached" if plugin.from_cache else "")
        self._bus.publish(ExtensionLoaded(extension_id=ext_id, version=manifest.version))

    def _check(self, wasm: bytes, name: str, manifest: Manifest,
               sha256: str | None = None) -> Checked:
        """Compile (or take from the cache) and check a module. Blocking."""
        t0 = time.perf_counter()
        compiled = self.runtime.compile(wasm, name, sha256)
        check_module_abi(compiled.module, wasm)
        check_module_memory(compiled.module, self._memory_bytes(manifest))
        return Checked(wasm, compiled, time.perf_counter() - t0)

    def _load_blocking(self, plugin: Plugin, checked: Checked | None = None) -> Checked:
        """Compile and check the plugin's module (unless ``checked`` is it), instantiate it
        and run ``plugin_init``. Returns the checked module."""
        t0 = time.perf_counter()
        m = plugin.manifest
        if checked is None:
            path = plugin.directory / m.wasm_file
            wasm = path.read_bytes()
            plugin.module_bytes = len(wasm)  # shown for a module that fails to compile too
            plugin.module_sha256 = module_sha256(wasm)
            checked = self._check(wasm, str(path), m, plugin.module_sha256)
        else:
            t0 -= checked.seconds
        module = checked.compiled.module
        plugin.module_bytes, plugin.module_sha256 = len(checked.wasm), checked.compiled.sha256
        plugin.module, plugin.from_cache = module, checked.compiled.from_cache
        plugin.policy = ExtensionPolicy(m, self.limits)
        env = self._env(plugin, "init")
        plugin.main = GuestInstance(self.runtime.engine, module, env,
                                    self._memory_bytes(m), self.limits)
        env.cpu_mark = time.thread_time()
        try:
            code = plugin.main.call("plugin_init")
        except errors.ExtensionError as e:
            raise errors.ExtensionError(failure_reason(env.last_error, e.message)) from None
        finally:
            env.merge_stats(peak_memory=plugin.main.memory.size())
        if code != 0:
            raise errors.ExtensionError(failure_reason(
                env.last_error, f"plugin_init of {m.id} returned {code}"))
        for job in env.registered:
            if not job_export_ok(module, job.export):
                raise errors.ExtensionError(
                    f"job {job.name!r} names export {job.export!r}, which is missing or not "
                    f"(i32, i32, i32, i32) -> i32")
            plugin.jobs[job.name] = job
        env.phase = "idle"
        plugin.load_ms = (time.perf_counter() - t0) * 1000
        return checked

    async def unload_plugin(self, ext_id: str, *, remember: bool = True,
                            grace: float = 10.0, reason: str = "unload") -> None:
        """Pause the extension's running jobs, call ``plugin_cleanup``, drop it."""
        async with self._lock:
            plugin = self._plugins.pop(ext_id, None)
            if plugin is None:
                raise errors.NotFound(f"extension {ext_id!r} is not loaded")
            if remember:
                self._remember(ext_id, False)
        running = list(self._running_contexts(ext_id))
        for ctx in running:
            ctx.request(Interrupt.PAUSE, reason)
        deadline = time.monotonic() + grace
        while self._running_contexts(ext_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # A guest still running now ignored the pause: it loses its rights from here on.
        plugin.revoked.set()
        if plugin.state == "loaded":
            await self._cleanup(plugin)
        log.info("extension %s unloaded (%d running jobs asked to pause)", ext_id, len(running))
        self._bus.publish(ExtensionUnloaded(extension_id=ext_id))

    async def upgrade(self, source: Path, *, force: bool = False) -> Manifest:
        """Replace an installed extension with the version at ``source``, jobs in flight.

        The new version is loaded first (compiled, checked, ``plugin_init`` run), so
        one that fails is refused with the old one in place. Then running jobs pause
        at their next check (reason ``upgrade``), the files are swapped (the old version
        kept for ``rollback``), the new version (that same instance) takes over, and
        the paused and queued jobs continue on it from their checkpoints. A version
        not newer than the installed one needs ``force``.
        """
        source, manifest = _read_source(source)
        if manifest.id not in self.installed():
            raise errors.NotFound(f"extension {manifest.id!r} is not installed; "
                                  f"install it with `sd ext install`")
        current = read_manifest(self.plugin_dir / manifest.id)
        order = compare_versions(manifest.version, current.version)
        if order <= 0 and not force:
            what = "the same version as" if order == 0 else "older than"
            raise errors.InvalidState(
                f"{manifest.id} {manifest.version} is {what} the installed {current.version}; "
                f"use --force to install it anyway")
        await self._replace(manifest, source, f"upgrade to {manifest.version}")
        return manifest

    async def rollback(self, ext_id: str) -> Manifest:
        """Swap the installed version and the one before it, jobs in flight, as ``upgrade``."""
        prev = previous_dir(self.plugin_dir, ext_id)
        if not (prev / "manifest.json").exists():
            raise errors.NotFound(f"no previous version of {ext_id!r} is kept")
        manifest = read_manifest(prev)
        await self._replace(manifest, prev, f"rollback to {manifest.version}")
        return manifest

    async def _replace(self, manifest: Manifest, source: Path, what: str,
                       checked: Checked | None = None) -> None:
        async with self._replacing:  # one upgrade, rollback or install-over at a time
            await self._replace_locked(manifest, source, what, checked)

    async def _replace_locked(self, manifest: Manifest, source: Path, what: str,
                              checked: Checked | None) -> None:
        # Loaded before anything changes (a module that fails to initialise is refused
        # here); this instance then serves: the module is compiled and initialised once.
        new = Plugin(manifest, source)
        try:
            checked = await asyncio.to_thread(self._load_blocking, new, checked)
        except BaseException:
            new.main = None
            raise
        ext_id = manifest.id
        try:
            async with self._lock:
                loaded = self._plugins.get(ext_id)
            if loaded is not None:
                await self.unload_plugin(ext_id, remember=False, reason="upgrade")
            await self._swap_in(manifest, source, checked)
            new.directory = self.plugin_dir / ext_id
            log.info("extension %s: %s (the version before it is kept)", ext_id, what)
            async with self._lock:
                current = self._plugins.get(ext_id)
                taken = current is not None and current.state == "loaded"  # loaded meanwhile
                if not taken:
                    self._register(new)
        except BaseException:
            # Its plugin_init ran: its plugin_cleanup runs too (the swap failed, e.g. a
            # full disk; the version installed before stays on disk, loaded at next start).
            await self._cleanup(new)
            raise
        if taken:
            await self._cleanup(new)
        elif self._on_loaded is not None:
            await self._on_loaded(ext_id)

    async def reload_plugin(self, ext_id: str) -> None:
        if ext_id in self._plugins:
            await self.unload_plugin(ext_id, remember=False)
        await self.load_plugin(ext_id)

    async def _cleanup(self, plugin: Plugin) -> None:
        def call() -> None:
            with plugin.main_lock:
                if plugin.main is None:
                    return
                env = plugin.main.env
                env.phase = "cleanup"
                env.cpu_mark = time.thread_time()
                try:
                    code = plugin.main.call("plugin_cleanup")
                    if code != 0:
                        log.warning("plugin_cleanup of %s returned %d", plugin.manifest.id, code)
                except errors.SdError as e:
                    log.warning("plugin_cleanup of %s failed: %s", plugin.manifest.id, e.message)
                env.merge_stats()
                plugin.main = None
        await asyncio.to_thread(call)
        plugin.state = "unloaded"

    # --- running jobs -------------------------------------------------------------------------
    def _job_gate(self, inp: WasmJobInput) -> asyncio.Semaphore | None:
        plugin = self._plugins.get(inp.extension_id)
        return None if plugin is None else plugin.gate

    def _run_job(self, ctx: JobContext, inp: WasmJobInput) -> Any:
        """The ``wasm_job`` handler; runs on the job's own thread.

        A job whose extension is not loaded pauses (its checkpoint kept) instead of
        failing: it can be resumed once the extension is loaded again.
        """
        plugin = self._plugins.get(inp.extension_id)
        if plugin is None or plugin.state != "loaded":
            ctx.add_warning(f"paused: extension {inp.extension_id} is not loaded; "
                            f"resume the job once it is")
            ctx.request(Interrupt.PAUSE, "extension not loaded")
            raise Interrupted()
        # A job is its registered name, from its label (a new version may export it under
        # another name); by export when the label had no name (queued while the extension
        # was not loaded, or before labels existed).
        name = ctx.title.split(":", 1)[1] if ctx.title.startswith(f"{inp.extension_id}:") else ""
        job = plugin.jobs.get(name)
        if job is None and name in ("", inp.export_fn):
            job = next((j for j in plugin.jobs.values() if j.export == inp.export_fn), None)
        if job is None and (ctx.resumed or name in self._seen_jobs.get(inp.extension_id, ())):
            # It ran, or was queued, under a version that had it: keep it for a rollback.
            ctx.add_warning(
                f"paused: {inp.extension_id} {plugin.manifest.version} no longer registers job "
                f"{name or inp.export_fn!r}; `sd ext rollback {inp.extension_id}` brings back "
                f"the version before it, or cancel the job")
            ctx.request(Interrupt.PAUSE, UNREGISTERED)
            raise Interrupted()
        if job is None:
            raise errors.ExtensionError(
                f"{inp.export_fn!r} is not a job export registered by {inp.extension_id}",
                {"jobs": {j.name: j.export for j in plugin.jobs.values()}})
        assert plugin.policy is not None and plugin.module is not None
        if not plugin.policy.allows_library(ctx.library_id):
            raise errors.PermissionDenied(
                f"extension {inp.extension_id} has no access to library {ctx.library_id}")
        state = ctx.checkpoint_bytes if ctx.checkpoint_bytes is not None else inp.state_json.encode()
        try:
            _json.decode(state)
        except msgspec.DecodeError as e:
            raise errors.InvalidParams(f"state_json is not valid JSON: {e}") from None
        env = self._env(plugin, "job")
        env.job_id = ctx.job_id
        env.cpu_mark = time.thread_time()
        outcome = "failed"
        instance: GuestInstance | None = None
        try:
            instance = GuestInstance(self.runtime.engine, plugin.module, env,
                                     self._memory_bytes(plugin.manifest), self.limits)
            ctx_json = _enc.encode(JobCtxJson(ctx.job_id, ctx.library_id, inp.extension_id,
                                              ctx.resumed))
            try:
                code = instance.run_job(job.export, ctx_json, state)
            except errors.ExtensionError as e:
                # A trap: the guest's own reason (e.g. the SDK's panic message) comes first.
                raise errors.ExtensionError(failure_reason(env.last_error, e.message)) from None
            finally:
                env.open_files.close()
            if code == 0:
                outcome = "completed"
                return None if ctx.checkpoint_bytes is None else _json.decode(ctx.checkpoint_bytes)
            if code == 1:
                if ctx.check_interrupt() is Interrupt.CONTINUE:
                    raise errors.ExtensionError(
                        f"job {job.name} of {inp.extension_id} returned 'interrupted' unasked")
                outcome = "cancelled" if ctx.check_interrupt() is Interrupt.CANCEL else "paused"
                raise Interrupted()
            raise errors.ExtensionError(failure_reason(
                env.last_error, f"job {job.name} of {inp.extension_id} failed with code {code}"))
        finally:
            env.merge_stats(peak_memory=0 if instance is None else instance.memory.size(),
                            outcome=outcome)

    # --- helpers ---------------------------------------------------------------------------------
    def _loaded(self, ext_id: str) -> Plugin:
        plugin = self._plugins.get(ext_id)
        if plugin is None or plugin.state != "loaded":
            raise errors.ExtensionError(f"extension {ext_id!r} is not loaded"
                                        + (f" ({plugin.error})" if plugin and plugin.error else ""))
        return plugin

    def _env(self, plugin: Plugin, phase: str) -> HostEnv:
        assert plugin.policy is not None
        caller = Caller(EXTENSION, extension_id=plugin.manifest.id, policy=plugin.policy)
        return HostEnv(plugin.manifest.id, caller, self._dispatch, self._contexts, self.limits,
                       plugin.log_limiter, self._deadline_ticks, plugin.revoked, phase=phase,
                       read_into=self._read_into, stats=self.stats.of(plugin.manifest.id),
                       epochs=self.runtime)

    def _memory_bytes(self, m: Manifest) -> int:
        return min(m.permissions.max_memory_mb, self.limits.max_memory_mb) * 1024 * 1024

    def _running_contexts(self, ext_id: str) -> list[JobContext]:
        return self._contexts.of_extension(ext_id)

    def _read_loaded(self) -> list[str]:
        try:
            return list(msgspec.json.decode((self.plugin_dir / "loaded.json").read_bytes(),
                                            type=list[str]))
        except (FileNotFoundError, msgspec.DecodeError):
            return []

    def _read_seen_jobs(self) -> dict[str, set[str]]:
        try:
            raw = (self.plugin_dir / "jobs.json").read_bytes()
            return {k: set(v) for k, v in
                    msgspec.json.decode(raw, type=dict[str, list[str]]).items()}
        except (OSError, msgspec.DecodeError):
            return {}

    def _saw_jobs(self, ext_id: str, jobs: dict[str, RegisteredJob]) -> None:
        seen = self._seen_jobs.setdefault(ext_id, set())
        if set(jobs) <= seen:
            return
        seen.update(jobs)
        tmp = self.plugin_dir / "jobs.json.tmp"
        tmp.write_bytes(_enc.encode({k: sorted(v) for k, v in self._seen_jobs.items()}))
        os.replace(tmp, self.plugin_dir / "jobs.json")

    def _remember(self, ext_id: str, loaded: bool) -> None:
        ids = set(self._read_loaded())
        (ids.add if loaded else ids.discard)(ext_id)
        tmp = self.plugin_dir / "loaded.json.tmp"
        tmp.write_bytes(_enc.encode(sorted(ids)))
        os.replace(tmp, self.plugin_dir / "loaded.json")


def failure_reason(guest_error: str | None, host_detail: str) -> str:
    """Why a call into a guest failed: the guest's last error-level log line, if it wrote
    one during the call, then what the host saw (a return code or a trap)."""
    if not guest_error:
        return host_detail
    return f"{guest_error} ({host_detail})"


def _read_source(source: Path) -> tuple[Path, Manifest]:
    """An extension to install: a directory with manifest.json, or a ``.wasm`` beside one."""
    source = Path(source)
    if source.is_file() and source.suffix == ".wasm":
        source = source.parent
    if not source.is_dir():
        raise errors.ExtensionError(f"{source} is not an extension directory")
    return source, read_manifest(source)
