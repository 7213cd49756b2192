"""Extension management (clients only) and running an extension's registered jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from daemon import errors
from daemon.extensions.manager import ExtensionInfo, PluginManager
from daemon.extensions.stats import StatsView
from rpc.registry import CLIENTS_ONLY, OPERATIONS, Empty, OpContext


class ExtensionId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class Upgrade(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    force: bool = False  # allow the same or an older version


class StatsInput(msgspec.Struct, forbid_unknown_fields=True):
    id: str | None = None  # one extension; None: every extension with figures


class Triggers(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    on: bool


class Install(msgspec.Struct, forbid_unknown_fields=True):
    path: str


class RunJob(msgspec.Struct, forbid_unknown_fields=True):
    extension_id: str
    job: str
    state: Any = msgspec.field(default_factory=dict)


def _pm(ctx: OpContext) -> PluginManager:
    pm = ctx.core.plugin_manager
    if pm is None:
        raise errors.InvalidState("extensions are not available in this daemon")
    return pm


@OPERATIONS.register("query:extensions.list.v1", Empty, callers=CLIENTS_ONLY)
async def list_extensions(ctx: OpContext, _: Empty) -> list[ExtensionInfo]:
    """Installed extensions and their state."""
    pm = _pm(ctx)
    ids = sorted(set(pm.installed()) | set(await pm.list_plugins()))
    return [ctx.core.extension_info(i) for i in ids]


@OPERATIONS.register("query:extensions.info.v1", ExtensionId, callers=CLIENTS_ONLY)
def info(ctx: OpContext, inp: ExtensionId) -> ExtensionInfo:
    """One extension: manifest, registered jobs, state."""
    return ctx.core.extension_info(inp.id)


@OPERATIONS.register("query:extensions.stats.v1", StatsInput, callers=CLIENTS_ONLY)
def stats(ctx: OpContext, inp: StatsInput) -> list[StatsView]:
    """What each extension cost: CPU, host time, calls, errors, logs, memory, jobs."""
    return _pm(ctx).stats_views(inp.id)


@OPERATIONS.register("action:extensions.install.input.v1", Install, callers=CLIENTS_ONLY)
async def install(ctx: OpContext, inp: Install) -> ExtensionInfo:
    """Validate an extension directory (or .wasm with a manifest beside it), copy it in, load it."""
    manifest = await _pm(ctx).install(Path(inp.path).expanduser())
    return ctx.core.extension_info(manifest.id)


@OPERATIONS.register("action:extensions.upgrade.input.v1", Upgrade, callers=CLIENTS_ONLY)
async def upgrade(ctx: OpContext, inp: Upgrade) -> ExtensionInfo:
    """Replace an installed extension with a newer version; its jobs continue on it."""
    manifest = await _pm(ctx).upgrade(Path(inp.path).expanduser(), force=inp.force)
    return ctx.core.extension_info(manifest.id)


@OPERATIONS.register("action:extensions.rollback.input.v1", ExtensionId, callers=CLIENTS_ONLY)
async def rollback(ctx: OpContext, inp: ExtensionId) -> ExtensionInfo:
    """Go back to the version installed before the last upgrade (or rollback)."""
    await _pm(ctx).rollback(inp.id)
    return ctx.core.extension_info(inp.id)


@OPERATIONS.register("action:extensions.load.input.v1", ExtensionId, callers=CLIENTS_ONLY)
async def load(ctx: OpContext, inp: ExtensionId) -> ExtensionInfo:
    """Load an installed extension."""
    await _pm(ctx).load_plugin(inp.id)
    return ctx.core.extension_info(inp.id)


@OPERATIONS.register("action:extensions.unload.input.v1", ExtensionId, callers=CLIENTS_ONLY)
async def unload(ctx: OpContext, inp: ExtensionId) -> dict[str, str]:
    """Unload an extension; its running jobs pause at their next check."""
    await _pm(ctx).unload_plugin(inp.id)
    return {"unloaded": inp.id}


@OPERATIONS.register("action:extensions.reload.input.v1", ExtensionId, callers=CLIENTS_ONLY)
async def reload(ctx: OpContext, inp: ExtensionId) -> ExtensionInfo:
    """Unload and load again (picks up a changed module)."""
    await _pm(ctx).reload_plugin(inp.id)
    return ctx.core.extension_info(inp.id)


@OPERATIONS.register("action:extensions.triggers.input.v1", Triggers, callers=CLIENTS_ONLY)
def triggers(ctx: OpContext, inp: Triggers) -> ExtensionInfo:
    """Pause (``on: false``) or resume an extension's manifest triggers."""
    info = ctx.core.extension_info(inp.id)
    if ctx.core.triggers is None:
        raise errors.InvalidState("extensions are not available in this daemon")
    ctx.core.triggers.set_paused(info.id, not inp.on)
    return ctx.core.extension_info(inp.id)


@OPERATIONS.register("action:extensions.run_job.input.v1", RunJob, library=True,
                     callers=CLIENTS_ONLY)
async def run_job(ctx: OpContext, inp: RunJob) -> dict[str, str]:
    """Dispatch a job an extension registered, by its registered name."""
    export = _pm(ctx).job_export(inp.extension_id, inp.job)
    state = inp.state if isinstance(inp.state, str) else msgspec.json.encode(inp.state).decode()
    job_id = await ctx.need_library().jobs.dispatch_by_name(
        "wasm_job", {"extension_id": inp.extension_id, "export_fn": export, "state_json": state})
    return {"job_id": job_id}
