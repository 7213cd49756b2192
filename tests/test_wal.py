"""daemon.libraries.wal: passive checkpoints from a thread of their own, on real files."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from daemon.libraries.wal import Checkpointer, checkpoint


def wal_db(path: Path) -> sqlite3.Connection:
    """A WAL database whose commits never checkpoint, with 2,000 rows in its WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(2000)])
    conn.execute("COMMIT")
    return conn


def test_kick_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    conn = wal_db(db)
    before = db.stat().st_size
    wal = Checkpointer(db)
    wal.kick()
    wal.wait()
    assert db.stat().st_size > before + 500 * 1000  # the rows are in the file now
    # The writer goes on, and a second checkpoint copies what came after.
    conn.execute("INSERT INTO t VALUES ('more')")
    assert b"more" not in db.read_bytes()
    wal.kick()
    wal.kick()  # skipped or run after: never two at once, never an error
    wal.wait()
    assert b"more" in db.read_bytes()  # only a checkpoint puts it in the file
    conn.close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 2001


def test_checkpoint_of_a_deleted_library_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    checkpoint(db)
    assert not os.path.exists(db)
    wal = Checkpointer(db)
    wal.kick()
    wal.wait()
    assert not os.path.exists(db)
