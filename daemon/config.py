"""Daemon settings: plain data, resolved once at start-up, kept apart from runtime state."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import msgspec


class ExtensionLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ceilings for every extension; a manifest may ask for less, never more."""

    max_memory_mb: int = 128
    max_tables: int = 10
    max_instances: int = 10
    # Guest code gets this long between returns to the host before it is stopped.
    time_slice_ms: int = 2000
    epoch_tick_ms: int = 10
    max_log_bytes: int = 64 * 1024
    max_payload_bytes: int = 4 * 1024 * 1024
    max_reply_bytes: int = 16 * 1024 * 1024
    max_checkpoint_bytes: int = 16 * 1024 * 1024
    requests_per_minute: int = 600_000
    concurrent_jobs: int = 8


class DaemonConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the daemon is told at start; never mutated afterwards."""

    data_dir: Path
    socket_path: Path
    log_level: str = "info"
    # Jobs running at once across all libraries; the rest wait in the persisted queue.
    max_running_jobs: int = max(os.cpu_count() or 1, 1)
    # One JSON-RPC message (one line) may not exceed this.
    max_line_bytes: int = 16 * 1024 * 1024
    # Events buffered per subscriber before new ones are dropped (and counted).
    subscriber_queue: int = 1024
    # A subscriber that has missed this many events is disconnected.
    subscriber_drop_limit: int = 100_000
    # Directory of built extensions (``<id>/manifest.json``) installed at start.
    bundled_extensions: Path | None = None
    extension_limits: ExtensionLimits = ExtensionLimits()
    # Seconds a clean shutdown waits for running jobs to reach a checkpoint.
    shutdown_grace_s: float = 10.0
    # Members of this group (primary or supplementary) may use the socket too (mode 0660).
    socket_gid: int | None = None
    # Inotify watches (directories) one location may use before it falls back to rescans;
    # 0: only the kernel's limit (fs.inotify.max_user_watches) applies.
    max_watches_per_location: int = 0
    # A location the watch limit keeps from being watched whole is watched afresh and
    # rescanned this often.
    watch_retry_s: float = 300.0


def default_data_dir() -> Path:
    """``$SD_DATA_DIR``, else ``$XDG_DATA_HOME/sd``, else ``~/.local/share/sd``."""
    if env := os.environ.get("SD_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sd"


def default_socket_path(data_dir: Path) -> Path:
    """``$SD_SOCKET``, else ``$XDG_RUNTIME_DIR/sd/sd.sock``, else ``<data-dir>/sd.sock``."""
    if env := os.environ.get("SD_SOCKET"):
        return Path(env)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "sd" / "sd.sock"
    return data_dir / "sd.sock"


def load_config(path: Path | None, overrides: dict[str, object]) -> DaemonConfig:
    """Settings from an optional JSON file, with ``overrides`` (command-line options) on top.

    Unknown keys and wrong types are refused with the offending field named.
    """
    from daemon.errors import InvalidParams

    values: dict[str, object] = {}
    if path is not None:
        try:
            loaded = msgspec.json.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError) as e:
            raise InvalidParams(f"cannot read config {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise InvalidParams(f"config {path} must hold a JSON object")
        values.update(loaded)
    values.update(overrides)
    try:
        return msgspec.convert(values, DaemonConfig, strict=False)
    except msgspec.ValidationError as e:
        raise InvalidParams(f"invalid config: {e}") from None


def resolve_group(name: str) -> int:
    """A group name or numeric gid as a gid; KeyError if no such group."""
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid
