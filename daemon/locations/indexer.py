"""The indexer job (``locations.index``): walks a location and keeps its entries in step.

Walk: depth-first over directories, never following a symlink (a link is an
entry of kind ``symlink``; one that loops is reported as a warning). Each
directory's listing is diffed against its stored children:

* unchanged children are not written at all;
* changed ones are updated in place (their cas_id is cleared);
* new ones are inserted, unless a stored entry with the same device, inode,
  kind, size and mtime is gone from its old path: then that entry is *moved*
  (its id, cas_id and tags survive; a directory's subtree moves with it). A
  rename keeps all of these; a directory moved *and* changed is not recognised
  (its files still are, one by one);
* vanished ones are marked ``missing`` and deleted, with their subtrees, once the
  walk ends (so a move seen in either order is still recognised).

An unreadable directory is a warning and keeps its stored children.

Writes go in batches of ``batch_size`` entries (or what 5 s of walking listed), one
transaction each on the database thread while the walk lists the next batch; each
committed batch is followed by a checkpoint holding the directories still to walk as
of that batch (not files: the state is as big as the walk's frontier). Re-doing a
batch after ``kill -9`` is harmless: the diff of an already-applied listing writes
nothing.

A location's first walk into a library it will dominate defers the entries' secondary
indexes (``daemon.libraries.deferred``): once it has listed as many entries as the
library held when it started (and at least ``DEFER_MIN``), the indexes its inserts
would write at random places are dropped with the insert trigger of ``entries`` (their
SQL recorded in the same transaction), rows go in without a diff in smaller batches
(each directory's hash written right after its rows), and all is made again before
the sweep (pause, cancel and failure too; after a shutdown or ``kill -9``, the next
open of the library does it).

A directory whose listing hashes to what was last applied for it (table
``dir_listings``) is not diffed at all: a rescan of an unchanged tree reads no
stored rows. Triggers drop a directory's hash whenever any code changes one of its
child rows (inserts during a bulk first walk excepted, see above), so the hash never
vouches for rows it did not see written.
"""

from __future__ import annotations

import enum
import errno
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, NamedTuple, TypeVar

import blake3
import msgspec

from daemon import errors
from daemon.jobs.context import Interrupt, Interrupted, JobContext
from daemon.libraries import deferred
from daemon.libraries.db import Database, transaction
from daemon.libraries.wal import Checkpointer, checkpoint
from daemon.locations import _listdir, content, store
from daemon.locations.fs import join

FLUSH_EVERY_S = 5.0
PROGRESS_EVERY_S = 1.0
WALK_CACHE_KIB_NEG = -64 * 1024  # PRAGMA cache_size in KiB (negative) during a walk
# PRAGMA wal_autocheckpoint during a walk: a backstop (256 MiB of WAL), should the
# Checkpointer fall behind. It is kicked every CHECKPOINT_EVERY rows a walk writes.
WALK_CHECKPOINT_PAGES = 65_536
CHECKPOINT_EVERY = 50_000
# An index job that inserted, moved or removed this many entries refreshes the planner's
# statistics (ANALYZE with a sampling limit: milliseconds).
ANALYZE_AFTER_CHANGES = 1000
_GONE_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
# A first walk (no move detection) defers the entries' secondary indexes once it has listed
# as many entries as the library held when it started (and at least DEFER_MIN): building
# them afresh afterwards costs about as much per row as inserting it, keeping them up
# during the inserts several times more. Rebuilding covers every row of the library, at
# most twice what this walk inserts, so a walk that crosses the line just before it ends
# pays at most that.
DEFER_MIN = 1000
# Deferred indexes of a table whose largest id is PARALLEL_SORT_ROWS or more (about its
# rows, read in one index seek) are built with SQLite's sorter on SORT_THREADS threads, in
# runs of SORT_CACHE_KIB: 1.6-1.9 s instead of 2.0-2.1 s for four indexes of 1,000,000
# entries here (2 cores); slower on 100,000.
PARALLEL_SORT_ROWS = 400_000
SORT_THREADS = max(1, min(4, os.cpu_count() or 1))
SORT_CACHE_KIB = 8 * 1024
# Batches of a deferred walk: small, so the walk lists the next one while this one is
# written (no random index writes to amortise).
DEFERRED_BATCH = 5000
# Kept while deferred: partial indexes (a first walk inserts no rows into them), one
# whose rows arrive in key order (location, then id): nearly free to keep up, and the
# inode index. Keeping that one up costs the database thread 0.3-0.6 us a row (inodes
# come mostly in order in a directory, or not), less than its share of the rebuild
# (0.4 us a row at 100,000 entries, 0.8 at 1,000,000), and the database thread has that
# much to spare while the walk lists.
KEEP_LIVE = frozenset({"entries_by_location", "entries_by_cas_id", "entries_missing",
                       "entries_rare_kind", "entries_rare_kind_size", "entries_by_inode"})
# Deferred too: the trigger that drops a directory's listing hash when a child row is
# inserted. Every code that inserts entries (apply_batch, apply_first_walk, the live
# watcher through apply_batch) writes that directory's hash itself right after.
DEFER_TRIGGERS = ("entries_insert_drops_listing",)
T = TypeVar("T")


class IndexInput(msgspec.Struct, forbid_unknown_fields=True):
    location_id: int
    # Also compute cas_ids (the locations.identify pass) once the walk is done.
    identify: bool = False
    # Large: every transaction rewrites the index pages it touched, and entries land at
    # random places of the size indexes, so fewer, larger batches write far less.
    batch_size: int = 50_000
    # Sleep after each committed batch: keeps a background rescan gentle on a busy disk
    # (tests use it to stop the daemon mid-walk deterministically).
    throttle_ms: int = 0
    # Why this run was started when it was not asked for (the live watcher's fallback after a
    # queue overflow or the watch limit); becomes the job's first warning.
    reason: str = ""

    def validate(self) -> None:
        if not 1 <= self.batch_size <= 100_000:
            raise errors.InvalidParams("batch_size must be between 1 and 100000")
        if not 0 <= self.throttle_ms <= 10_000:
            raise errors.InvalidParams("throttle_ms must be between 0 and 10000")
        if len(self.reason) > 1000:
            raise errors.InvalidParams("reason must be at most 1000 characters")


# A directory entry as listed: (name, kind, size, mtime_ns, dev, inode, extension).
# A plain tuple (a NamedTuple costs several times more to make, once per entry).
Child = tuple[str, str, int, int, int, int, str]
NAME: Final = 0
KIND: Final = 1
SIZE: Final = 2
MTIME: Final = 3
DEV: Final = 4
INODE: Final = 5
EXT: Final = 6


class Gone(enum.Enum):
    """The listing of a directory that vanished during the walk."""

    GONE = "gone"


# A directory's listing; None = unreadable (keep what is stored), GONE = no longer there.
Listing = list[Child] | None | Gone
GONE = Gone.GONE
# One directory of a batch: (path, listing, hash of the listing or None, unchanged: the
# listing is the one last applied, so there is nothing to write).
Listed = tuple[str, Listing, bytes | None, bool]
_pack = msgspec.msgpack.Encoder().encode


def listing_hash(listing: list[Child]) -> bytes:
    """16 bytes of BLAKE3 over a listing (names, kinds, sizes, mtimes, devices, inodes)."""
    return blake3.blake3(_pack(listing)).digest()[:16]


class Counts(msgspec.Struct):
    seen: int = 0
    dirs: int = 0
    inserted: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0


def index_job(ctx: JobContext, inp: IndexInput) -> dict[str, Any]:
    """``locations.index``: walk, sweep what is gone, then (``identify``) hash new files."""
    db = ctx.db
    root = db.run_sync(lambda c: store.location_root(c, inp.location_id))
    others = [j for j in db.run_sync(lambda c: store.active_jobs(
        c, inp.location_id, (ctx.name,), status=("running",))) if j != ctx.job_id]
    if others:
        raise errors.InvalidState(f"indexer job {others[0]} is already running for location "
                                  f"{inp.location_id}")
    db.run_sync(lambda c: store.set_index_job(c, inp.location_id, ctx.job_id))
    if inp.reason and not ctx.resumed:
        ctx.add_warning(inp.reason)
    state: dict[str, Any] = dict(ctx.state or {})
    if not state:
        existing = db.run_sync(lambda c: store.get_location(c, inp.location_id).entries)
        state = {"phase": "walk", "stack": [""], "moves": existing > 0, "expect": existing,
                 "counts": msgspec.to_builtins(Counts())}
    counts = msgspec.convert(state["counts"], Counts)
    t0 = time.monotonic()
    deferred_n = 0
    # Orphans come from moves: a walk that ran whole in this run without move detection
    # (a first walk) leaves none to look for.
    orphans = True
    if state["phase"] == "walk":
        # A page cache that holds the entries' indexes while a walk writes them (random
        # inserts into a million-entry index would otherwise read and write the disk);
        # given back when the walk ends.
        # The WAL is copied into the database file by a thread of its own (``wal``),
        # kicked as the walk writes, rather than inline by the commits of the one
        # thread that writes; a commit checkpoints itself only past a backstop.
        wal = Checkpointer(db.path)
        db.run_sync(_walk_settings)
        try:
            walker = Walker(ctx, inp, root, state, counts, wal)
            try:
                walker.run()
            except BaseException:
                # Not at shutdown, which must not wait for them: the next open makes them.
                if walker.bulk and ctx.interrupt_reason != "shutdown":
                    _restore_quietly(ctx, wal)
                raise
            # Before the sweep, which uses them; with the walk's cache. Also what a stopped
            # walk left deferred, when this one (a first walk) did not defer them itself
            # and no other walk of the library (which may have deferred them) is running.
            if walker.bulk or (not walker.moves and db.run_sync(
                    lambda c: _left_deferred(c, ctx.name, ctx.job_id))):
                _restore(ctx, wal)
        finally:
            db.run_sync(_default_cache)
            # Commits checkpoint as usual again once the walk's WAL is copied: the
            # sweep's and the job's own commits would otherwise copy it inline, on the
            # way to the job's end.
            threading.Thread(target=_checkpoint_then_default, args=(db, wal),
                             name="wal-checkpoint", daemon=True).start()
        deferred_n = walker.deferred
        orphans = walker.moves
        state["phase"] = "sweep"
    if state["phase"] == "sweep":
        counts.removed += _guard(ctx, lambda: db.run_sync(
            lambda c: finish_scan(c, inp.location_id, orphans)))
        if counts.inserted + counts.removed + counts.moved >= ANALYZE_AFTER_CHANGES:
            db.run_sync(store.refresh_statistics)
        state.update(phase="identify" if inp.identify else "done", stack=[],
                     counts=msgspec.to_builtins(counts))
        ctx.report_progress(1.0 if not inp.identify else 0.5, f"indexed {counts.seen} entries")
        ctx.checkpoint(state)
    out: dict[str, Any] = {"location_id": inp.location_id, **msgspec.to_builtins(counts),
                           "warnings": len(ctx.warnings), "deferred_indexes": deferred_n,
                           "seconds": round(time.monotonic() - t0, 3)}
    if state["phase"] == "identify":
        extra = {k: v for k, v in state.items() if k != "identify"}
        out["identify"] = _guard(ctx, lambda: content.identify(
            ctx, inp.location_id, dict(state.get("identify") or {}), extra, progress_from=0.5))
    return out


def _restore(ctx: JobContext, wal: Checkpointer) -> None:
    """Make the deferred indexes again (before the sweep, which uses them)."""
    def progress(done: int, total: int) -> None:
        # Meanwhile the other core copies what the walk and the indexes made so far
        # into the database file.
        wal.kick()
        ctx.report_progress(ctx.progress, f"building the entries' indexes ({done}/{total})")
    t0 = time.monotonic()
    n = ctx.db.run_sync(lambda c: _build_indexes(c, progress))
    if n:
        ctx.log(f"made {n} deferred indexes and triggers again in "
                f"{time.monotonic() - t0:.2f} s")


def _left_deferred(conn: sqlite3.Connection, job_name: str, job_id: str) -> bool:
    """Indexes are deferred and no other indexer job is running (none deferred them)."""
    return bool(deferred.missing(conn)) and conn.execute(
        "SELECT 1 FROM jobs WHERE name = ? AND status = 'running' AND id != ? LIMIT 1",
        (job_name, job_id)).fetchone() is None


def _build_indexes(conn: sqlite3.Connection, progress: Callable[[int, int], None]) -> int:
    """``deferred.restore``; a large table's indexes are sorted on several threads."""
    rows = conn.execute("SELECT max(id) FROM entries").fetchone()[0] or 0
    if rows < PARALLEL_SORT_ROWS:
        return deferred.restore(conn, progress)
    # SQLite's sorter hands each run of SORT_CACHE_KIB of keys to a thread of its own and
    # merges them on several too; one run in memory is quicker for fewer rows.
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute(f"PRAGMA threads={SORT_THREADS}")
    conn.execute(f"PRAGMA cache_size=-{SORT_CACHE_KIB}")
    try:
        return deferred.restore(conn, progress)
    finally:
        conn.execute("PRAGMA threads=0")
        conn.execute(f"PRAGMA cache_size={int(cache)}")


def _restore_quietly(ctx: JobContext, wal: Checkpointer) -> None:
    """``_restore`` on the way out of a failed or stopped walk: a failure of its own (a
    full disk) is logged, the walk's error is the one reported; the next index job or
    open of the library tries again. Not at shutdown: the next open does it."""
    try:
        _restore(ctx, wal)
    except errors.SdError as e:
        ctx.log(f"could not make the deferred indexes again: {e.message}", logging.WARNING)
    except (sqlite3.Error, OSError) as e:
        ctx.log(f"could not make the deferred indexes again: {type(e).__name__}: {e}",
                logging.WARNING)


def _walk_settings(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA cache_size={WALK_CACHE_KIB_NEG}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WALK_CHECKPOINT_PAGES}")


def _default_cache(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA cache_size=-2000")


def _checkpoint_then_default(db: Database, wal: Checkpointer) -> None:
    """A passive checkpoint of the walk's WAL, then commits checkpoint as usual again."""
    wal.wait()
    checkpoint(db.path)
    try:
        db.submit(lambda c: c.execute("PRAGMA wal_autocheckpoint=1000"))
    except (errors.LibraryUnavailable, RuntimeError):
        pass  # closed meanwhile (shutdown, deleted): the next open starts with the default


def _guard(ctx: JobContext, fn: Callable[[], T]) -> T:
    """Run ``fn``; a location removed under a cancelled job ends it as cancelled."""
    try:
        return fn()
    except errors.NotFound:
        if ctx.check_interrupt() is not Interrupt.CONTINUE:
            raise Interrupted() from None
        raise


class Walker:
    """The walk of one indexer run: lists directories, hands batches to the database."""

    def __init__(self, ctx: JobContext, inp: IndexInput, root: str, state: dict[str, Any],
                 counts: Counts, wal: Checkpointer) -> None:
        self.ctx, self.inp, self.root, self.state, self.counts = ctx, inp, root, state, counts
        self.wal = wal
        self.written = 0  # rows written since the Checkpointer was last kicked
        self.stack: list[str] = list(state["stack"])
        # Inode matching costs a lookup per new entry: skip it on a location's first walk.
        self.moves = bool(state["moves"]) or ctx.resumed
        self.progress = 0.0
        db = ctx.db
        # Deferred indexes a stopped walk left (a full disk while making them again) are
        # made first, unless this is a first walk that may defer them again anyway.
        if self.moves and db.run_sync(deferred.missing):
            _restore(ctx, wal)
        self.bulk = False  # the indexes are deferred: rows go in without a diff
        self.deferred = 0  # how many indexes this walk deferred
        # Entries listed when this walk defers the indexes (None: it never does).
        self.defer_at: int | None = None
        if not self.moves:
            held = db.run_sync(lambda c: c.execute("SELECT count(*) FROM entries").fetchone()[0])
            self.defer_at = max(int(held), DEFER_MIN)
        self.inflight: tuple[Future[Applied], list[str], list[Listed]] | None = None
        self.saving: Future[None] | None = None  # the last checkpoint, queued
        # The hash of each directory's listing as last applied: a directory listed the
        # same again is not diffed at all (the database drops a hash whenever a child
        # row changes, whoever changes it: see migration 5's triggers).
        loc = inp.location_id
        self.known: dict[str, bytes] = dict(ctx.db.run_sync(lambda c: c.execute(
            "SELECT path, hash FROM dir_listings WHERE location_id = ?", (loc,)).fetchall()))

    def run(self) -> None:
        batch: list[Listed] = []
        pending = 0
        last = time.monotonic()
        known = self.known
        shown = last
        while self.stack:
            rel = self.stack.pop()
            listing = self.list_dir(rel)
            if isinstance(listing, list):
                digest = listing_hash(listing)
                batch.append((rel, listing, digest, known.get(rel) == digest))
                pending += 1 + len(listing)
            else:
                batch.append((rel, listing, None, False))
                pending += 1
            now = time.monotonic()
            if pending >= self.limit() or now - last >= FLUSH_EVERY_S:
                self.flush(batch)
                batch, pending, last = [], 0, now
            elif now - shown >= PROGRESS_EVERY_S:
                shown = now
                self.show_progress(self.counts.seen + pending, len(self.stack))
        if batch:
            self.flush(batch)
        self.settle()
        self.saved()

    def limit(self) -> int:
        """Entries listed before a batch is handed over."""
        if self.bulk:
            return min(self.inp.batch_size, DEFERRED_BATCH)
        if self.defer_at is not None:  # hand over as soon as the indexes are to be deferred
            return max(min(self.inp.batch_size, self.defer_at - self.counts.seen), 1)
        return self.inp.batch_size

    def flush(self, batch: list[Listed]) -> None:
        """Hand a batch to the database thread; the walk goes on while it is written."""
        self.settle()
        db = self.ctx.db
        loc, root, moves = self.inp.location_id, self.root, self.moves
        listed = self.counts.seen + sum(len(x[1]) for x in batch if isinstance(x[1], list))
        if self.defer_at is not None and not self.bulk and listed >= self.defer_at:
            # Recorded with the drop: whatever stops the walk, the library gets them back.
            names = db.run_sync(lambda c: deferred.defer(c, "entries", KEEP_LIVE,
                                                         DEFER_TRIGGERS))
            self.ctx.log(f"deferred {', '.join(names)} for a bulk first walk")
            self.bulk = True
            self.deferred = sum(1 for n in names if n not in DEFER_TRIGGERS)
        if self.bulk:
            prepared = prepare_first_walk(batch)
            fut = db.submit(lambda conn: apply_first_walk(conn, loc, root, batch, prepared))
        else:
            fut = db.submit(lambda conn: apply_batch(conn, loc, root, batch, moves))
        self.inflight = (fut, list(self.stack), batch)

    def settle(self) -> None:
        """Wait for the batch in flight, then checkpoint the walk as of that batch."""
        if self.inflight is None:
            return
        fut, stack, batch = self.inflight
        self.inflight = None
        res = _guard(self.ctx, fut.result)
        c = self.counts
        seen = sum(len(listing) for _, listing, _, _ in batch if isinstance(listing, list))
        c.seen += seen
        c.dirs += len(batch)
        c.inserted += res.inserted
        c.updated += res.updated
        c.moved += res.moved
        self.written += res.inserted + res.updated + res.moved
        if self.written >= CHECKPOINT_EVERY:
            self.written = 0
            self.wal.kick()
        self.ctx.increment_items(seen)
        self.state.update(stack=stack, counts=msgspec.to_builtins(c))
        self.show_progress(c.seen, len(stack))
        # Written before the next batch (queued after it on the database thread), without
        # waiting for it here: the walk goes on listing meanwhile.
        self.saved()
        self.saving = self.ctx.checkpoint_later(self.state)
        if self.ctx.check_interrupt() is not Interrupt.CONTINUE:
            self.saved()
            raise Interrupted()
        if self.inp.throttle_ms:
            time.sleep(self.inp.throttle_ms / 1000)

    def saved(self) -> None:
        """Wait for the last checkpoint queued (raising what writing it raised)."""
        saving, self.saving = self.saving, None
        if saving is not None:
            saving.result()

    def show_progress(self, seen: int, to_go: int) -> None:
        """Progress by entries seen (of those stored before) or by directories walked."""
        expect = self.state.get("expect") or 0
        dirs = self.counts.dirs
        estimate = (min(seen / expect, 0.99) if expect
                    else dirs / (dirs + to_go) * 0.99 if dirs + to_go else 0.0)
        self.progress = max(self.progress, estimate * (0.5 if self.inp.identify else 1.0))
        self.ctx.report_progress(self.progress,
                                 f"indexed {seen} entries, {to_go} directories to go")

    def list_dir(self, rel: str) -> Listing:
        subdirs: list[str] = []
        listing = list_directory(self.root, rel, self.ctx.add_warning, subdirs)
        # Walked in path order (the stack pops the smallest first): rows then arrive in the
        # order of the path and parent indexes, so inserting them appends to those indexes.
        subdirs.sort(reverse=True)
        self.stack += subdirs
        return listing


def list_directory(root: str, rel: str, warn: Callable[[str], None],
                   subdirs: list[str]) -> Listing:
    """One directory's children (never following a link); its subdirectories' relative
    paths are appended to ``subdirs``. Also used by the live watcher (``locations.live``)."""
    path = join(root, rel) if rel else root
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if not rel:
            raise errors.InvalidState(
                f"location root {root} cannot be opened ({e.strerror}); is it "
                f"unmounted? The index is left as it was") from None
        if e.errno in _GONE_ERRNOS:
            return GONE
        warn(f"cannot read directory {rel}: {e.strerror}")
        return None
    try:
        children, dirs, links, bad, failed = _listdir.listdir(fd)
    except OSError as e:
        warn(f"cannot read directory {rel or '.'}: {e.strerror}")
        return None
    finally:
        os.close(fd)
    for raw in bad:
        warn(f"skipped a name that is not UTF-8 in {rel or '.'}: "
             f"{os.fsdecode(raw).encode('utf-8', 'backslashreplace')!r}")
    subdirs += [join(rel, name) for name in dirs]
    for name in links:
        check_link(root, rel, name, warn)
    if failed:
        # Names we could list but not stat: keep the directory's stored children.
        warn(f"cannot read directory {rel or '.'}: {failed} entries could not be examined")
        return None
    return children


def check_link(root: str, rel: str, name: str, warn: Callable[[str], None]) -> None:
    """Warn about a link that would loop if followed (it never is)."""
    link = join(root, join(rel, name))
    try:
        os.stat(link)
    except OSError as e:
        if e.errno == errno.ELOOP:
            warn(f"symlink loop at {join(rel, name)} (a cycle of links; not followed)")
        return
    target = os.path.realpath(link)
    here = join(root, rel) if rel else root
    if here == target or here.startswith(target.rstrip("/") + "/"):
        warn(f"symlink loop at {join(rel, name)} -> {os.readlink(link)} "
             f"(points at its own ancestor; not followed)")


# --- database side ----------------------------------------------------------------------------
class Applied(NamedTuple):
    inserted: int
    updated: int
    moved: int


# Rows go in as multi-row VALUES statements of a few fixed sizes (each prepared once):
# SQLite works without the GIL while it runs one, and binding a row's values costs less
# than any per-row statement or a JSON document to take apart. A row is a listed child
# with its directory in front and its path behind:
# (parent, name, kind, size, mtime_ns, dev, inode, extension, path). At most 256 rows a
# statement: binding them holds the GIL, which the walk's thread waits for after each
# directory it lists; 1,024 made the first index of 100,000 entries 3-5% slower.
_ROW_WIDTH = 9
_CHUNKS = (256, 64, 16, 4, 1)


@functools.cache
def _insert_sql(location_id: int, rows: int) -> str:
    return ("INSERT INTO entries (location_id, parent, name, kind, size, mtime_ns, dev, inode, "
            "extension, path) VALUES "
            + ", ".join([f"({int(location_id)}, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows))


@functools.cache
def _listings_sql(location_id: int, rows: int) -> str:
    return ("INSERT OR REPLACE INTO dir_listings (location_id, path, hash) "
            f"SELECT {int(location_id)}, column1, column2 FROM (VALUES "
            + ", ".join(["(?, ?)"] * rows) + ")")


@functools.cache
def _stored_under_sql(location_id: int, rows: int) -> str:
    # [dir/, dir0) is exactly the paths under dir (see store.delete_subtree)
    return ("SELECT 1 FROM (VALUES " + ", ".join(["(?)"] * rows) + ") d JOIN entries e "
            f"ON e.location_id = {int(location_id)} AND e.path > d.column1 || '/' "
            "AND e.path < d.column1 || '0' LIMIT 1")


def _chunked(conn: sqlite3.Connection, sql: Callable[[int, int], str], location_id: int,
             flat: list[Any], width: int) -> bool:
    """Run ``sql(location_id, n)`` over ``flat`` (``width`` values a row), a few fixed
    sizes of ``n`` (each statement prepared once); True if any statement returned a row."""
    n = len(flat) // width
    i = 0
    found = False
    for size in _CHUNKS:
        step = size * width
        while n - i >= size:
            cur = conn.execute(sql(location_id, size), flat[i * width:i * width + step])
            found = found or cur.fetchone() is not None
            i += size
    return found


def _insert(conn: sqlite3.Connection, location_id: int, flat: list[Any]) -> int:
    """Insert rows given flat (``_ROW_WIDTH`` values each); returns how many."""
    _chunked(conn, _insert_sql, location_id, flat, _ROW_WIDTH)
    return len(flat) // _ROW_WIDTH


def _rows(parent: str, children: list[Child], out: list[Any]) -> None:
    add = out.extend
    if parent:
        under = parent + "/"
        for ch in children:
            add((parent, *ch, under + ch[NAME]))
    else:
        for ch in children:
            add((parent, *ch, ch[NAME]))


def apply_batch(conn: sqlite3.Connection, location_id: int, root: str,
                batch: list[Listed], detect_moves: bool) -> Applied:
    """Apply directory listings in one transaction, directory by directory (in walk order)."""
    store.require_location(conn, location_id)
    inserted = updated = moved = 0
    with transaction(conn):
        for parent, listing, digest, unchanged in batch:
            if listing is None or unchanged:
                continue
            if listing is GONE:
                if parent:
                    conn.execute("UPDATE entries SET missing = 1 WHERE location_id = ? AND path = ?",
                                 (location_id, parent))
                continue
            existing = {r[0]: r[1:] for r in conn.execute(
                "SELECT name, id, kind, size, mtime_ns, dev, inode, missing FROM entries "
                "WHERE location_id = ? AND parent = ?", (location_id, parent))}
            new: list[Child]
            if existing:
                new = []
                changed, found = [], []
                for ch in listing:
                    row = existing.pop(ch[NAME], None)
                    if row is None:
                        new.append(ch)
                    elif row[1:6] != ch[KIND:EXT]:
                        changed.append((ch[KIND], ch[EXT], ch[SIZE], ch[MTIME], ch[DEV],
                                        ch[INODE], row[0]))
                        if row[1] == "dir" and ch[KIND] != "dir":
                            store.delete_subtree(conn, location_id, join(parent, ch[NAME]))
                    elif row[6]:
                        found.append((row[0],))
                gone = [(r[0],) for r in existing.values() if not r[6]]
                if changed:
                    conn.executemany(
                        "UPDATE entries SET kind = ?, extension = ?, size = ?, mtime_ns = ?, "
                        "dev = ?, inode = ?, cas_id = NULL, missing = 0 WHERE id = ?", changed)
                if found:
                    conn.executemany("UPDATE entries SET missing = 0 WHERE id = ?", found)
                if gone:
                    conn.executemany("UPDATE entries SET missing = 1 WHERE id = ?", gone)
                updated += len(changed)
            else:
                new = listing
            if new and detect_moves:
                new, n = _moves(conn, location_id, root, parent, new)
                moved += n
            if new:
                flat: list[Any] = []
                _rows(parent, new, flat)
                inserted += _insert(conn, location_id, flat)
            # Written last: every write above to a child row dropped the old hash.
            conn.execute("INSERT OR REPLACE INTO dir_listings (location_id, path, hash) "
                         "VALUES (?, ?, ?)", (location_id, parent, digest))
    return Applied(inserted, updated, moved)


class Prepared(NamedTuple):
    """A first walk's batch as rows to insert, made on the walk's thread (which has time
    to spare) rather than the database's."""
    rows: list[Any]  # flat, _ROW_WIDTH values a row
    hashes: list[Any]  # flat (directory, hash of its listing) pairs
    gone: list[str]  # directories that vanished before they were listed


def prepare_first_walk(batch: list[Listed]) -> Prepared:
    rows: list[Any] = []
    hashes: list[Any] = []
    gone: list[str] = []
    for parent, listing, digest, _ in batch:
        if listing is GONE:
            if parent:
                gone.append(parent)
        elif listing is not None:
            _rows(parent, listing, rows)
            hashes += (parent, digest)
    return Prepared(rows, hashes, gone)


def apply_first_walk(conn: sqlite3.Connection, location_id: int, root: str,
                     batch: list[Listed], prepared: Prepared) -> Applied:
    """``apply_batch`` for a first walk while the entries' indexes are deferred
    (``prepared`` is ``prepare_first_walk(batch)``).

    A first walk lists each directory once and nothing else writes the location while an
    indexer job runs (the live watcher waits), so a listed directory has no stored
    descendants yet: its children are inserted without a diff, the whole batch at once.
    That is checked (an index seek per directory); should any be stored after all, the
    batch is diffed as usual (``apply_batch``, slower without the indexes, still right).
    """
    store.require_location(conn, location_id)
    dirs = [parent for parent, listing, _, _ in batch if isinstance(listing, list)]
    stored = _chunked(conn, _stored_under_sql, location_id, [d for d in dirs if d], 1)
    if not stored and "" in dirs:
        stored = conn.execute("SELECT 1 FROM entries WHERE location_id = ? LIMIT 1",
                              (location_id,)).fetchone() is not None
    if stored:
        return apply_batch(conn, location_id, root, batch, False)
    # The location's row was just read on this thread, which nothing else writes
    # in between: the per-row foreign key lookup would only find it again. The kinds
    # are the listing's own four, which the CHECK on kind would only confirm.
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA ignore_check_constraints=ON")
    try:
        with transaction(conn):
            inserted = _insert(conn, location_id, prepared.rows)
            # After the rows: a directory that vanished may have been listed by its
            # parent in this very batch.
            for parent in prepared.gone:
                conn.execute("UPDATE entries SET missing = 1 WHERE location_id = ? AND path = ?",
                             (location_id, parent))
            # After the rows: inserting a child drops its directory's hash (the triggers).
            _chunked(conn, _listings_sql, location_id, prepared.hashes, 2)
        return Applied(inserted, 0, 0)
    finally:
        conn.execute("PRAGMA ignore_check_constraints=OFF")
        conn.execute("PRAGMA foreign_keys=ON")


def _moves(conn: sqlite3.Connection, location_id: int, root: str, parent: str,
           new: list[Child]) -> tuple[list[Child], int]:
    """Move stored entries whose inode reappears at a new path; returns the truly new ones."""
    candidates: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    inodes = sorted({ch[INODE] for ch in new})
    for i in range(0, len(inodes), 500):
        chunk = inodes[i:i + 500]
        for r in conn.execute(
                "SELECT id, path, kind, size, mtime_ns, dev, inode, missing FROM entries "
                f"WHERE location_id = ? AND inode IN ({', '.join('?' * len(chunk))})",
                (location_id, *chunk)):
            candidates.setdefault((r[5], r[6]), []).append(r)
    rest, moved = [], 0
    for ch in new:
        row = next((r for r in candidates.get((ch[DEV], ch[INODE]), ())
                    if _same_object(r, ch) and _gone_from(root, r)), None)
        if row is None:
            rest.append(ch)
            continue
        candidates[(ch[DEV], ch[INODE])].remove(row)
        _move(conn, location_id, row, parent, ch)
        moved += 1
    return rest, moved


def _same_object(r: tuple[Any, ...], ch: Child) -> bool:
    # A rename keeps kind, size and mtime (a directory's too); requiring them guards
    # against a deleted entry's inode being reused by a new one.
    return (r[2], r[3], r[4]) == (ch[KIND], ch[SIZE], ch[MTIME])


def _gone_from(root: str, r: tuple[Any, ...]) -> bool:
    if r[7]:
        return True
    try:
        st = os.lstat(join(root, r[1]))
    except OSError:
        return True
    return (st.st_dev, st.st_ino) != (r[5], r[6])  # replaced: the old object left that path


def _move(conn: sqlite3.Connection, location_id: int, row: tuple[Any, ...], parent: str,
          ch: Child) -> None:
    old, new = row[1], join(parent, ch[NAME])
    conn.execute(
        "UPDATE entries SET path = ?, parent = ?, name = ?, extension = ?, size = ?, mtime_ns = ?, "
        "missing = 0 WHERE id = ?",
        (new, parent, ch[NAME], ch[EXT], ch[SIZE], ch[MTIME], row[0]))
    if ch[KIND] == "dir":
        # The subtree follows (see store.delete_subtree for the range).
        n = len(old) + 1
        conn.execute(
            "UPDATE OR IGNORE entries SET path = ? || substr(path, ?), parent = ? || substr(parent, ?) "
            "WHERE location_id = ? AND path >= ? AND path < ?",
            (new, n, new, n, location_id, old + "/", old + "0"))


def finish_scan(conn: sqlite3.Connection, location_id: int, orphans: bool = True) -> int:
    """Delete what the walk found gone (with subtrees) and (``orphans``) any row whose
    directory is not stored; returns rows deleted."""
    store.require_location(conn, location_id)
    removed = 0
    with transaction(conn):
        removed += store.delete_missing(conn, location_id)
        # Entries whose directory is not stored (a row a subtree move's UPDATE OR IGNORE
        # left behind): found by their parent paths, each looked up once, not row by row.
        # The index is not named while another location's first walk has it deferred
        # (the indexes are the library's): the location's rows are scanned instead.
        by_parent = ("" if orphans and "entries_by_parent" in deferred.missing(conn)
                     else "INDEXED BY entries_by_parent")
        while orphans:
            orphaned = [(parent,) for (parent,) in conn.execute(
                f"SELECT DISTINCT parent FROM entries {by_parent} "
                "WHERE location_id = ? AND parent != ''", (location_id,)).fetchall()
                if conn.execute("SELECT 1 FROM entries WHERE location_id = ? AND path = ?",
                                (location_id, parent)).fetchone() is None]
            if not orphaned:
                break
            for (parent,) in orphaned:
                removed += conn.execute("DELETE FROM entries WHERE location_id = ? AND parent = ?",
                                        (location_id, parent)).rowcount
        conn.execute("UPDATE locations SET indexed_at = ? WHERE id = ?", (time.time(), location_id))
    return removed
