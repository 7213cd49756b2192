"""Installed versions of an extension on disk: the current one, the previous one, and
the swap between them that an upgrade or a rollback makes.

Layout under the plugin directory::

    <id>/                 the version that loads
    .previous/<id>/       the version before it (``sd ext rollback`` swaps them)
    .staging/<id>/        a version being put in place; ``.complete`` marks it whole

A swap is: write ``.staging/<id>`` (files fsynced, then ``.complete``), move the
old ``.previous/<id>`` aside and delete it, rename ``<id>`` to
``.previous/<id>``, rename ``.staging/<id>`` to ``<id>``. Renames are atomic,
so a crash (``kill -9``) leaves ``<id>`` as one version or the other, or missing
between the last two renames; ``recover`` (at start) then finishes the swap if
the staged copy is complete, or puts the previous version back.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("sd.extensions")

PREVIOUS, STAGING, TRASH = ".previous", ".staging", ".trash"
COMPLETE = ".complete"


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, the same as or newer than ``b``.

    Dotted numbers compare numerically (``0.10.0`` > ``0.9.1``); a pre-release
    suffix (``1.0.0-rc1``) sorts before its release; other text compares as text.
    """
    def key(v: str) -> tuple[tuple[tuple[int, int | str], ...], int, str]:
        core, _, pre = v.strip().lstrip("vV").partition("-")
        parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+]", core))
        return parts, 0 if pre else 1, pre
    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def previous_dir(plugin_dir: Path, ext_id: str) -> Path:
    return plugin_dir / PREVIOUS / ext_id


def swap_in(plugin_dir: Path, ext_id: str, source: Path, files: list[str],
            contents: dict[str, bytes] | None = None) -> None:
    """Make ``source`` (its ``files``) the current version of ``ext_id``; the current
    one becomes the previous. The files named in ``contents`` are written with those
    bytes (the module as it was checked) instead of copied. Blocking; crash-safe as the
    module says."""
    contents = contents or {}
    staging = plugin_dir / STAGING / ext_id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    for name in files:
        if name in contents:
            (staging / name).write_bytes(contents[name])
        else:
            shutil.copyfile(source / name, staging / name)
        _fsync(staging / name)
    (staging / COMPLETE).touch()
    _fsync_dir(staging)
    current = plugin_dir / ext_id
    previous = previous_dir(plugin_dir, ext_id)
    if current.exists():
        previous.parent.mkdir(exist_ok=True, mode=0o700)
        if previous.exists():
            trash = plugin_dir / TRASH / ext_id
            trash.parent.mkdir(exist_ok=True, mode=0o700)
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(previous, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(current, previous)
        _fsync_dir(previous.parent)
    os.replace(staging, current)
    (current / COMPLETE).unlink(missing_ok=True)
    _fsync_dir(plugin_dir)


def recover(plugin_dir: Path) -> None:
    """After a crash in the middle of ``swap_in``: one version of each extension in place."""
    shutil.rmtree(plugin_dir / TRASH, ignore_errors=True)
    staging_root = plugin_dir / STAGING
    if not staging_root.is_dir():
        return
    for staged in staging_root.iterdir():
        current = plugin_dir / staged.name
        previous = previous_dir(plugin_dir, staged.name)
        if not current.exists() and (staged / COMPLETE).exists():
            os.replace(staged, current)
            (current / COMPLETE).unlink(missing_ok=True)
            log.warning("extension %s: finished an upgrade that a crash interrupted", staged.name)
            continue
        if not current.exists() and previous.exists():
            os.replace(previous, current)
            log.warning("extension %s: a crash interrupted an upgrade; the previous version "
                        "is back", staged.name)
        shutil.rmtree(staged, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync(path)
