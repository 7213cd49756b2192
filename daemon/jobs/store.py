"""Job rows in a library database. Every function runs on the database thread.

Invariant: a job row is written before its job is announced, so a queued job
is never lost; every status change is one transaction that also appends to
``job_transitions``.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, NamedTuple

import msgspec

from daemon.libraries.db import transaction

FINAL = frozenset({"completed", "failed", "cancelled"})
DISK_FULL = "disk full"  # a pause reason (see JobContext)
STATUSES = ("queued", "running", "paused", "completed", "failed", "cancelled")


class Progress(NamedTuple):
    progress: float
    message: str
    items: int
    bytes: int
    warnings: list[str]


Blob = bytes  # the field named `bytes` below shadows the type inside the class


class JobRow(msgspec.Struct):
    """One row of ``jobs`` as stored."""

    id: str
    name: str
    input: Blob
    status: str
    resumable: bool
    extension_id: str | None
    created_at: float
    queued_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    progress: float
    message: str
    items: int
    bytes: int
    warnings: list[str]
    error: str | None
    output: Blob | None
    checkpoint: Blob | None
    checkpoint_at: float | None
    checkpoints: int
    pause_reason: str | None
    label: str | None

    @property
    def title(self) -> str:
        """What the job is called where it is shown: its label, else its type's name."""
        return self.label or self.name


_COLUMNS = (
    "id, name, input, status, resumable, extension_id, created_at, queued_at, started_at, "
    "finished_at, updated_at, progress, message, items, bytes, warnings, error, output, "
    "checkpoint, checkpoint_at, checkpoints, pause_reason, label"
)
_warnings = msgspec.json.Decoder(list[str])
_enc = msgspec.json.Encoder()


def _row(r: tuple[Any, ...]) -> JobRow:
    vals = list(r)
    vals[4] = bool(vals[4])
    vals[15] = _warnings.decode(vals[15])
    return JobRow(*vals)


def insert(conn: sqlite3.Connection, job_id: str, name: str, input_json: bytes,
           resumable: bool, extension_id: str | None, label: str | None = None) -> None:
    now = time.time()
    with transaction(conn):
        conn.execute(
            "INSERT INTO jobs (id, name, input, status, resumable, extension_id, created_at, "
            "queued_at, updated_at, label) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, name, input_json, int(resumable), extension_id, now, now, now, label))
        conn.execute("INSERT INTO job_transitions VALUES (?, 'queued', ?, NULL)", (job_id, now))


def get(conn: sqlite3.Connection, job_id: str) -> JobRow | None:
    r = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if r is None else _row(r)


def list_jobs(conn: sqlite3.Connection, status: str | None, limit: int,
              extension_id: str | None = None) -> list[JobRow]:
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if extension_id is not None:
        where.append("extension_id = ?")
        args.append(extension_id)
    cond = f"WHERE {' AND '.join(where)} " if where else ""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs {cond}ORDER BY seq DESC LIMIT ?",
                        (*args, limit))
    return [_row(r) for r in rows]


def paused_for(conn: sqlite3.Connection, extension_id: str, reasons: tuple[str, ...]) -> list[str]:
    """Paused jobs of an extension whose pause had one of ``reasons``, in FIFO order."""
    return [r[0] for r in conn.execute(
        f"SELECT id FROM jobs WHERE status = 'paused' AND extension_id = ? "
        f"AND pause_reason IN ({', '.join('?' * len(reasons))}) ORDER BY queued_at, seq",
        (extension_id, *reasons))]


def count_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
        counts[status] = n
    return counts


def queued_ids(conn: sqlite3.Connection) -> list[str]:
    """Queued jobs in FIFO order."""
    return [r[0] for r in conn.execute(
        "SELECT id FROM jobs WHERE status = 'queued' ORDER BY queued_at, seq")]


def transitions(conn: sqlite3.Connection, job_id: str) -> list[tuple[str, float, str | None]]:
    return list(conn.execute(
        "SELECT status, at, note FROM job_transitions WHERE job_id = ? ORDER BY rowid", (job_id,)))


def transition(
    conn: sqlite3.Connection,
    job_id: str,
    status: str,
    *,
    expect: tuple[str, ...] | None = None,
    progress: Progress | None = None,
    error: str | None = None,
    output: bytes | None = None,
    pause_reason: str | None = None,
    note: str | None = None,
) -> bool:
    """Move a job to ``status`` (only from one of ``expect``); False if it was not there."""
    now = time.time()
    sets = ["status = ?", "updated_at = ?", "pause_reason = ?"]
    args: list[Any] = [status, now, pause_reason]
    if status == "running":
        sets.append("started_at = ?")
        args.append(now)
    if status == "queued":
        sets.append("queued_at = ?")
        args.append(now)
    if status in FINAL:
        sets.append("finished_at = ?")
        args.append(now)
    if progress is not None:
        sets += ["progress = ?", "message = ?", "items = ?", "bytes = ?", "warnings = ?"]
        args += [progress.progress, progress.message, progress.items, progress.bytes,
                 _enc.encode(progress.warnings)]
    if error is not None:
        sets.append("error = ?")
        args.append(error)
    if output is not None:
        sets.append("output = ?")
        args.append(output)
    where = "id = ?"
    args.append(job_id)
    if expect:
        where += f" AND status IN ({', '.join('?' * len(expect))})"
        args += list(expect)
    with transaction(conn):
        cur = conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE {where}", args)
        if cur.rowcount == 0:
            return False
        conn.execute("INSERT INTO job_transitions VALUES (?, ?, ?, ?)", (job_id, status, now, note))
    return True


def save_checkpoint(conn: sqlite3.Connection, job_id: str, state: bytes, p: Progress) -> None:
    now = time.time()
    conn.execute(
        "UPDATE jobs SET checkpoint = ?, checkpoint_at = ?, checkpoints = checkpoints + 1, "
        "progress = ?, message = ?, items = ?, bytes = ?, warnings = ?, updated_at = ? "
        "WHERE id = ?",
        (state, now, p.progress, p.message, p.items, p.bytes, _enc.encode(p.warnings), now, job_id))


def recover(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """After a stop: requeue resumable running jobs and those paused by shutdown or a full
    disk; fail the rest.

    Returns (requeued ids, failed ids).
    """
    now = time.time()
    requeued, failed = [], []
    with transaction(conn):
        rows = conn.execute(
            "SELECT id, status, resumable, pause_reason FROM jobs "
            "WHERE status = 'running' OR (status = 'paused' AND pause_reason IN ('shutdown', ?)) "
            "ORDER BY queued_at, seq", (DISK_FULL,)).fetchall()
        for job_id, status, resumable, reason in rows:
            if status == "paused" or resumable:
                note = ("requeued at start after a pause for lack of space" if reason == DISK_FULL
                        else "resumed after a clean shutdown" if status == "paused"
                        else "requeued after the daemon stopped while it was running")
                conn.execute("UPDATE jobs SET status = 'queued', pause_reason = NULL, "
                             "updated_at = ? WHERE id = ?", (now, job_id))
                conn.execute("INSERT INTO job_transitions VALUES (?, 'queued', ?, ?)",
                             (job_id, now, note))
                requeued.append(job_id)
            else:
                msg = "the daemon stopped while this job was running (job type is not resumable)"
                conn.execute("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, "
                             "updated_at = ? WHERE id = ?", (msg, now, now, job_id))
                conn.execute("INSERT INTO job_transitions VALUES (?, 'failed', ?, ?)",
                             (job_id, now, msg))
                failed.append(job_id)
    return requeued, failed
