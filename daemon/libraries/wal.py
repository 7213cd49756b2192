"""WAL checkpoints on a thread of their own, for bulk writes.

A commit that finds the WAL past ``wal_autocheckpoint`` pages copies it into the
database file itself (and fsyncs it) before it returns: during a location's first
walk that stalls the one thread that writes. A ``Checkpointer`` does the copying from a
connection of its own instead, a PASSIVE checkpoint at a time (it never blocks the
writer, nor waits for it), while the writer goes on; its owner raises
``wal_autocheckpoint`` meanwhile so that commits leave the copying to it.

Only an optimisation: a checkpoint that fails (the library deleted meanwhile, a full
disk) is logged and the next commit with the default setting checkpoints as usual.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import urllib.parse
from pathlib import Path

log = logging.getLogger("sd.db")


class Checkpointer:
    """Passive checkpoints of one database file, at most one running at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def kick(self) -> None:
        """Start a checkpoint unless one is running (then it is skipped, not queued)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=checkpoint, args=(self.path,),
                                            name="wal-checkpoint", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        """Until the checkpoint running (if any) is done."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


def checkpoint(path: Path) -> None:
    """One PASSIVE checkpoint of ``path`` from a connection of its own."""
    try:
        # mode=rw: never creates the file (the library may be being deleted meanwhile).
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=rw", uri=True,
                               timeout=0)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
    except sqlite3.Error as e:
        log.debug("checkpoint of %s skipped: %s", path, e)
