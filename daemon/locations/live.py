"""Applying a batch of live changes to the index, with the indexer's own diff.

The watcher (``daemon.locations.watch``) only says which directories changed; here
they are listed again (``indexer.list_directory``) and the listings applied with
``indexer.apply_batch``, move detection on, exactly as a rescan of those
directories would: unchanged children are not written, changed ones updated (their
cas_id cleared), a stored entry whose inode reappears elsewhere is moved (id,
cas_id and tags kept), vanished ones deleted with their subtrees. What changed is
read back by entry id for the ``entries.*`` events.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import NamedTuple

from daemon.libraries.db import transaction
from daemon.locations import indexer, store
from daemon.locations.fs import join

Warn = Callable[[str], None]


class Changes(NamedTuple):
    created: list[int]
    modified: list[int]
    moved: list[int]
    removed: list[int]

    def __bool__(self) -> bool:
        return bool(self.created or self.modified or self.moved or self.removed)


class Listed(NamedTuple):
    listings: list[indexer.Listed]  # (path, listing, hash, unchanged) as the indexer takes them
    mtimes: dict[str, int]  # each listed directory's own mtime
    subdirs: list[str]  # the subdirectories seen in the listings


def depth_order(dirs: Iterable[str]) -> list[str]:
    """Parents before children (the root, '', first)."""
    return sorted(dirs, key=lambda d: (0 if not d else d.count("/") + 1, d))


def list_dirs(root: str, dirs: list[str], warn: Warn) -> Listed:
    """List ``dirs`` (relative paths, parents first). Runs off the event loop."""
    listings: list[indexer.Listed] = []
    mtimes: dict[str, int] = {}
    subdirs: list[str] = []
    for rel in dirs:
        listing = indexer.list_directory(root, rel, warn, subdirs)
        digest = indexer.listing_hash(listing) if isinstance(listing, list) else None
        listings.append((rel, listing, digest, False))
        if rel and isinstance(listing, list):
            try:
                mtimes[rel] = os.lstat(join(root, rel)).st_mtime_ns
            except OSError:
                pass
    return Listed(listings, mtimes, subdirs)


# Filesystems where a directory's link count is 2 + its subdirectories (ext4 sets 1 past
# 65,000 of them): one with 2 has none, and its files need not be listed to find them.
_NLINK_COUNTS_SUBDIRS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})


def walk_dirs(root: str) -> list[str]:
    """Every directory under ``root`` (relative, parents first), never following a link.

    A directory with no subdirectory by its link count, on a filesystem that counts them
    (``_NLINK_COUNTS_SUBDIRS``, by ``/proc/self/mountinfo``), is not listed: a tree of
    leaf directories full of files costs one ``lstat`` per directory, not a listing.
    """
    counted = _devices_counting_subdirs()
    out, stack = [""], [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(join(root, rel) if rel else root) as it:
                for de in it:
                    if de.is_dir(follow_symlinks=False):
                        child = join(rel, de.name)
                        out.append(child)
                        try:
                            st = de.stat(follow_symlinks=False)
                        except OSError:
                            st = None
                        if st is None or st.st_nlink != 2 or st.st_dev not in counted:
                            stack.append(child)
        except OSError:
            continue
    return out


def _devices_counting_subdirs() -> set[int]:
    """The st_dev of every mounted filesystem whose type counts subdirectories in links."""
    devs: set[int] = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                try:
                    fstype = fields[fields.index("-") + 1]
                    major, minor = fields[2].split(":")
                except (ValueError, IndexError):
                    continue
                if fstype in _NLINK_COUNTS_SUBDIRS:
                    devs.add(os.makedev(int(major), int(minor)))
    except OSError:
        pass
    return devs


_SNAPSHOT = ("SELECT id, path, kind, size, mtime_ns FROM entries "
             "WHERE location_id = ? AND parent = ? AND missing = 0")


def _snapshot(conn: sqlite3.Connection, location_id: int,
              dirs: list[str]) -> dict[int, tuple[str, str, int, int]]:
    snap: dict[int, tuple[str, str, int, int]] = {}
    for d in dirs:
        for r in conn.execute(_SNAPSHOT, (location_id, d)):
            snap[r[0]] = (r[1], r[2], r[3], r[4])
    return snap


def apply(conn: sqlite3.Connection, location_id: int, root: str, listed: Listed) -> Changes:
    """Apply the listings, delete what vanished, and say which entries changed how.

    Runs on the database thread as one call, so nothing else writes between the steps.
    """
    dirs = [rel for rel, _, _, _ in listed.listings]
    before = _snapshot(conn, location_id, dirs)
    max_id = conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0]
    indexer.apply_batch(conn, location_id, root, listed.listings, True)
    removed = sweep(conn, location_id)
    with transaction(conn):
        # A directory's own mtime moves with its children; keep it as a rescan would see it.
        # Only where it moved: an UPDATE OF mtime_ns drops the parent's listing hash
        # (migration 5's trigger) even when the value stays the same.
        conn.executemany("UPDATE entries SET mtime_ns = ?1 WHERE location_id = ?2 AND path = ?3 "
                         "AND kind = 'dir' AND mtime_ns != ?1",
                         [(m, location_id, rel) for rel, m in listed.mtimes.items()])
    after = _snapshot(conn, location_id, dirs)
    created, modified, moved = [], [], []
    for entry_id, (path, kind, size, mtime) in after.items():
        if entry_id > max_id:
            created.append(entry_id)
            continue
        old = before.get(entry_id)
        if old is None or old[0] != path:
            moved.append(entry_id)
        elif kind != "dir" and (old[1], old[2], old[3]) != (kind, size, mtime):
            modified.append(entry_id)
    return Changes(sorted(created), sorted(modified), sorted(moved), removed)


def sweep(conn: sqlite3.Connection, location_id: int) -> list[int]:
    """Delete entries marked missing, with the subtrees of directories; returns their ids."""
    removed: list[int] = []
    with transaction(conn):
        store.delete_missing(conn, location_id, removed)
    return sorted(removed)
