"""Live watching of locations: inotify (asyncinotify) on the event loop, batched changes.

One ``LocationWatcher`` per watched location: one inotify instance with a watch per
directory, read on the event loop (no thread, no timer while nothing changes). An
event only marks its directory dirty; a batch is cut 50 ms after the last event or
250 ms after its first, whichever comes first, and applied by ``live`` (the
indexer's diff of those directories), then announced as ``entries.*`` events.

Directory moves inside the location are followed by their inotify cookies (the
watches keep their descriptors; their paths are renamed); a directory that appears
(created, or moved in from outside) is watched and then listed, so nothing created
in it in between is missed.

While an indexer job is active for the location (its first index, a rescan), the
dirty directories wait and are applied when it ends, so the two never interleave.

Falling back: when the kernel's queue overflows (events were lost), the watches are
set up afresh and an incremental rescan is dispatched with that reason as its first
job warning; when the watch limit is reached (``fs.inotify.max_user_watches``, or the
daemon's ``max_watches_per_location``), the directories that could be watched stay
live, a rescan is dispatched the same way, and every ``watch_retry_s`` (default 300)
the watches are made afresh and the location rescanned.
``sd location list`` shows each location's state and the last fallback.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from asyncinotify import Event as InotifyEvent
from asyncinotify import Inotify, Mask, Watch

from daemon.events import (
    EntriesCreated,
    EntriesModified,
    EntriesMoved,
    EntriesRemoved,
    EventBus,
    JobCompleted,
    JobEvent,
    JobPaused,
)
from daemon.locations import INDEX_JOB, live, snapshot, store
from daemon.locations.dispatch import dispatch_index
from daemon.locations.fs import join

if TYPE_CHECKING:
    from daemon.libraries.manager import Library

log = logging.getLogger("sd.watch")

QUIET_S = 0.05  # a batch is cut this long after the last event ...
MAX_WAIT_S = 0.25  # ... or this long after its first one
ANNOUNCE_CHUNK = 10_000  # entry ids per entries.* event after a rescan
MAX_FAILURES = 3  # batches failing in a row before the watcher gives up (state "stopped")
READ_CACHE = 1024  # events (of the longest name) read per syscall
_MASK = (Mask.CREATE | Mask.DELETE | Mask.MODIFY | Mask.ATTRIB | Mask.CLOSE_WRITE
         | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF
         | Mask.ONLYDIR | Mask.DONT_FOLLOW | Mask.EXCL_UNLINK)
_JOB_ENDS = ("job.completed", "job.failed", "job.cancelled", "job.paused")
OVERFLOW_REASON = ("the kernel's inotify queue overflowed (fs.inotify.max_queued_events): "
                   "changes were lost, so the location is rescanned")


def _proc_inotify(name: str) -> str:
    try:
        with open(f"/proc/sys/fs/inotify/{name}") as f:
            return f.read().strip()
    except OSError:
        return "?"


async def request_rescan(lib: Library, location_id: int, reason: str = "") -> str | None:
    """Dispatch an incremental rescan unless an indexer job is already active for the
    location; returns the new job's id, or None."""
    active = await lib.db.run(lambda c: store.active_jobs(c, location_id, (INDEX_JOB,)))
    if active:
        return None
    return await dispatch_index(lib, location_id, reason=reason)


class LocationWatcher:
    """The watches of one location and its pending changes."""

    def __init__(self, bus: EventBus, lib: Library, location_id: int, root: str,
                 max_watches: int, retry_s: float,
                 rescan: Callable[[Library, int, str], Awaitable[str | None]]) -> None:
        self.rescan = rescan
        self.bus, self.lib, self.location_id, self.root = bus, lib, location_id, root
        self.max_watches = max_watches
        self.retry_s = retry_s
        self.ino: Inotify | None = None
        self.wd_path: dict[int, str] = {}
        self.path_wd: dict[str, int] = {}
        self.watches: dict[int, Watch] = {}
        self.dirty: set[str] = set()
        self.moves_from: dict[int, str] = {}  # cookie -> old path of a directory moved away
        self.overflowed = False
        self.limited: str | None = None  # why not every directory is watched
        self.fallback_job: str | None = None
        self.note = ""
        self.stopped: str | None = None
        self.batches = 0
        self._first = self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._again = False
        self._rewatching = False
        self._failed: str | None = None
        self._failures = 0

    # --- state ---------------------------------------------------------------------------
    def state(self) -> str:
        if self.stopped:
            return f"stopped: {self.stopped}"
        if self.fallback_job:
            return f"rescanning (job {self.fallback_job}): " + (self.limited or "queue overflow")
        if self.limited:
            return f"limited: {self.limited}"
        return "watching"

    # --- set-up and tear-down ---------------------------------------------------------------
    async def start(self) -> None:
        """Watch every directory of the location (the walk runs off the loop)."""
        await self._close_inotify()
        self.wd_path.clear()
        self.path_wd.clear()
        self.watches.clear()
        self.limited = None
        self.stopped = None
        try:
            self.ino = Inotify(cache_size=READ_CACHE)
        except OSError as e:  # EMFILE: fs.inotify.max_user_instances
            self._limit(f"no inotify instance could be made ({e.strerror}; "
                        f"fs.inotify.max_user_instances = {_proc_inotify('max_user_instances')})")
            return
        self._reader = asyncio.create_task(self._read(self.ino),
                                           name=f"watch-{self.location_id}")
        dirs = await asyncio.to_thread(live.walk_dirs, self.root)
        for i, rel in enumerate(dirs):
            self._add_watch(rel)
            if i % 500 == 499:
                await asyncio.sleep(0)
        if "" not in self.path_wd and not self.limited:
            self.stopped = f"the location's root {self.root} cannot be watched"
            log.warning("location %d: %s", self.location_id, self.stopped)
        if self.limited:
            self.limited += f": {len(self.path_wd)} of {len(dirs)} directories watched"
        log.info("location %d: %d directories watched%s", self.location_id, len(self.path_wd),
                 f" ({self.limited})" if self.limited else "")

    async def stop(self) -> None:
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry = None
        if self._flusher is not None:
            await _cancel(self._flusher)
            self._flusher = None
        await self._close_inotify()

    async def _close_inotify(self) -> None:
        if self._reader is not None:
            await _cancel(self._reader)
            self._reader = None
        if self.ino is not None:
            self.ino.close()
            self.ino = None

    def _add_watch(self, rel: str) -> bool:
        if self.ino is None:
            return False
        if self.max_watches and len(self.path_wd) >= self.max_watches:
            self._limit(f"the daemon's max_watches_per_location ({self.max_watches}) is reached")
            return False
        try:
            w = self.ino.add_watch(join(self.root, rel) if rel else self.root, _MASK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self._limit("the inotify watch limit is reached (fs.inotify.max_user_watches = "
                            f"{_proc_inotify('max_user_watches')})")
            elif e.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("location %d: cannot watch %s: %s", self.location_id, rel or ".",
                            e.strerror)
            return False
        old = self.wd_path.get(w.wd)
        if old is not None and self.path_wd.get(old) == w.wd:
            del self.path_wd[old]
        self.wd_path[w.wd] = rel
        self.path_wd[rel] = w.wd
        self.watches[w.wd] = w
        return True

    def _limit(self, why: str) -> None:
        if self.limited is None:
            self.limited = why
            log.warning("location %d: %s; falling back to rescans every %.0f s",
                        self.location_id, why, self.retry_s)
            self._wake(now=True)

    def _forget(self, rel: str) -> None:
        """Stop watching ``rel`` and everything below it (it left the location)."""
        prefix = rel + "/"
        for path in [p for p in self.path_wd if p == rel or p.startswith(prefix)]:
            wd = self.path_wd.pop(path)
            self.wd_path.pop(wd, None)
            watch = self.watches.pop(wd, None)
            if self.ino is not None and watch is not None:
                try:
                    self.ino.rm_watch(watch)
                except OSError:
                    pass  # already gone with its directory

    def _rename(self, old: str, new: str) -> None:
        prefix = old + "/"
        for path in [p for p in self.path_wd if p == old or p.startswith(prefix)]:
            wd = self.path_wd.pop(path)
            moved = new + path[len(old):]
            self.path_wd[moved] = wd
            self.wd_path[wd] = moved

    # --- events ----------------------------------------------------------------------------------
    async def _read(self, ino: Inotify) -> None:
        while True:
            self._on_event(await ino.get())

    def _on_event(self, ev: InotifyEvent) -> None:
        mask = ev.mask
        if mask & Mask.Q_OVERFLOW:
            if not self.overflowed:
                log.warning("location %d: inotify queue overflow", self.location_id)
            self.overflowed = True
            self._wake(now=True)
            return
        watch = ev.watch
        rel = None if watch is None else self.wd_path.get(watch.wd)
        if rel is None:
            return
        if mask & Mask.IGNORED:
            assert watch is not None
            self.wd_path.pop(watch.wd, None)
            self.watches.pop(watch.wd, None)
            if self.path_wd.get(rel) == watch.wd:
                del self.path_wd[rel]
            return
        if ev.name is None:
            if not rel and mask & (Mask.DELETE_SELF | Mask.MOVE_SELF):
                self.stopped = f"the location's root {self.root} was moved or deleted"
                log.warning("location %d: %s", self.location_id, self.stopped)
            return
        child = join(rel, str(ev.name))
        self.dirty.add(rel)
        if mask & Mask.ISDIR:
            if mask & Mask.MOVED_FROM:
                self.moves_from[ev.cookie] = child
            elif mask & Mask.MOVED_TO:
                old = self.moves_from.pop(ev.cookie, None)
                if old is not None:
                    self._rename(old, child)
        self._wake()

    def _wake(self, now: bool = False) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        if not self._first:
            self._first = t
        self._last = t
        if now and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = loop.call_later(0 if now else QUIET_S, self._tick)

    def poke(self) -> None:
        """An indexer job of this library ended: apply what waited for it."""
        if self.dirty or self.overflowed or self._rewatching or self.fallback_job \
                or self.limited:
            self._wake(now=True)

    def _tick(self) -> None:
        self._timer = None
        if self._flusher is not None and not self._flusher.done():
            self._again = True  # the flush in progress looks again when it is done
            return
        t = asyncio.get_running_loop().time()
        due = min(self._last + QUIET_S, self._first + MAX_WAIT_S)
        if t < due and not self.overflowed and not self._rewatching:
            self._timer = asyncio.get_running_loop().call_later(due - t, self._tick)
            return
        self._first = self._last = 0.0
        self._flusher = asyncio.create_task(self._flush(), name=f"watch-flush-{self.location_id}")
        self._flusher.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("location %d: applying changes failed: %r", self.location_id, exc)
            self._failures += 1
            if self._failures >= MAX_FAILURES:
                self.stopped = f"applying changes failed {self._failures} times in a row: {exc}"
                return
            # What that batch held is not known to be in the index: rescan instead.
            self._failed = f"{type(exc).__name__}: {exc}"
            self._wake(now=True)
            return
        self._failures = 0
        if self.dirty or self.overflowed or self._again:
            self._again = False
            self._wake()

    # --- applying a batch -----------------------------------------------------------------------
    async def _flush(self) -> None:
        if self.stopped:
            self.dirty.clear()
            return
        active = await self.lib.db.run(
            lambda c: store.active_jobs(c, self.location_id, (INDEX_JOB,)))
        if self._failed:
            why, self._failed = self._failed, None
            self.dirty.clear()
            await self._fall_back(f"applying live changes failed ({why}); the location is "
                                  f"rescanned", "live update failed")
            return
        if self.fallback_job and self.fallback_job not in active:
            self.fallback_job = None  # the fallback rescan ended
        if self.overflowed or self._rewatching:
            overflow = self.overflowed
            self.overflowed = self._rewatching = False
            self.dirty.clear()
            self.moves_from.clear()
            await self.start()  # a fresh instance: every descriptor and path right again
            if overflow:
                await self._fall_back(OVERFLOW_REASON, "queue overflow")
            elif self.limited:
                await self._fall_back(self._limited_reason(), "watch limit")
            else:
                await self._fall_back("every directory is watched again (the watch limit no "
                                      "longer binds); rescanned for what changed meanwhile",
                                      "watch limit lifted")
            self._schedule_retry()
            return
        if self.limited and self._retry is None:
            await self._fall_back(self._limited_reason(), "watch limit")
            self._schedule_retry()
        if active:
            return  # applied when the indexer job ends (poke)
        await self._apply()

    async def _fall_back(self, reason: str, short: str) -> None:
        job_id = await self.rescan(self.lib, self.location_id, reason)
        self.fallback_job = job_id
        self.note = (f"{short} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     + (f"rescan job {job_id}" if job_id else "an indexer job was running"))
        log.warning("location %d: %s", self.location_id, self.note)

    def _limited_reason(self) -> str:
        return (f"{self.limited}; changes outside the watched directories are found by "
                f"rescans every {self.retry_s:g} s")

    def _schedule_retry(self) -> None:
        if self.limited and self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(self.retry_s, self._rewatch)

    def _rewatch(self) -> None:
        """In the limited state: try to watch everything again, then rescan."""
        self._retry = None
        self._rewatching = True
        self._wake(now=True)

    async def _apply(self) -> None:
        for old in self.moves_from.values():
            self._forget(old)  # moved out of the location
        self.moves_from.clear()
        if not self.dirty:
            return
        todo = live.depth_order(self.dirty)
        self.dirty = set()
        seen = set(todo)
        listings: list[live.Listed] = []
        while todo:
            listed = await asyncio.to_thread(live.list_dirs, self.root, todo, self._warn)
            listings.append(listed)
            # Directories that appeared: watch them first, then list them (parents first).
            todo = [d for d in listed.subdirs if d not in self.path_wd and d not in seen]
            for d in todo:
                self._add_watch(d)
            seen.update(todo)
        merged = live.Listed([x for ls in listings for x in ls.listings],
                             {k: v for ls in listings for k, v in ls.mtimes.items()}, [])
        changes = await self.lib.db.run(
            lambda c: live.apply(c, self.location_id, self.root, merged))
        self.batches += 1
        self._publish(changes)

    def _warn(self, message: str) -> None:
        log.warning("location %d: %s", self.location_id, message)

    def _publish(self, changes: live.Changes) -> None:
        lib_id, loc = self.lib.id, self.location_id
        for cls, ids in ((EntriesCreated, changes.created), (EntriesModified, changes.modified),
                         (EntriesMoved, changes.moved), (EntriesRemoved, changes.removed)):
            if ids:
                self.bus.publish(cls(library_id=lib_id, location_id=loc, entry_ids=ids))


async def _cancel(task: asyncio.Task[None]) -> None:
    if task is asyncio.current_task():
        return  # stopping from within (the library was closed under a batch): it ends itself
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as e:  # noqa: BLE001 - stopping anyway; it was logged by its callback
        log.debug("watch task ended with %r", e)


class WatchService:
    """Every watched location of every library; owned by the Core."""

    def __init__(self, bus: EventBus, max_watches_per_location: int = 0,
                 retry_s: float = 300.0) -> None:
        self.bus = bus
        self.max_watches = max_watches_per_location
        self.retry_s = retry_s
        self._watchers: dict[tuple[str, int], LocationWatcher] = {}
        self._listener: asyncio.Task[None] | None = None
        # Rescans this service dispatched: (library, location, largest entry id before it,
        # the location's entries before it).
        self._announce: dict[str, tuple[Library, int, int, snapshot.Snapshot]] = {}

    async def start_all(self, libraries: list[Library]) -> None:
        """At daemon start: watch every location that has watching on, then reconcile it
        with an incremental rescan (whatever changed while the daemon was down)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="watch-job-ends")
        for lib in libraries:
            for loc_id, _ in await lib.db.run(store.watched_locations):
                try:
                    await self.start(lib, loc_id)
                    await self.rescan(lib, loc_id)
                except Exception as e:  # noqa: BLE001 - one location must not stop the others
                    log.error("location %d of library %s: cannot watch: %s", loc_id, lib.id, e)

    async def start(self, lib: Library, location_id: int) -> None:
        current = self._watchers.get((lib.id, location_id))
        if current is not None and not current.stopped:
            return
        await self.stop(lib.id, location_id)  # a stopped one (root gone) starts afresh
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="watch-job-ends")
        root = await lib.db.run(lambda c: store.location_root(c, location_id))
        w = LocationWatcher(self.bus, lib, location_id, root, self.max_watches,
                            self.retry_s, self.rescan)
        self._watchers[(lib.id, location_id)] = w
        try:
            await w.start()
        except BaseException:
            del self._watchers[(lib.id, location_id)]
            await w.stop()
            raise

    async def stop(self, library_id: str, location_id: int) -> None:
        w = self._watchers.pop((library_id, location_id), None)
        if w is not None:
            await w.stop()

    async def stop_library(self, lib: Library) -> None:
        for key in [k for k in self._watchers if k[0] == lib.id]:
            await self.stop(*key)

    def get(self, library_id: str, location_id: int) -> LocationWatcher | None:
        return self._watchers.get((library_id, location_id))

    def describe(self, library_id: str, location: store.Location) -> store.Location:
        w = self.get(library_id, location.id)
        location.watch_state = "off" if w is None else w.state()
        location.watch_note = "" if w is None else w.note
        return location

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        for key in list(self._watchers):
            await self.stop(*key)

    async def rescan(self, lib: Library, location_id: int, reason: str = "") -> str | None:
        """``request_rescan``, and once it completes, ``entries.created`` for the entries it
        inserted (what appeared while the daemon was down or events were lost), then
        ``entries.modified`` and ``entries.removed`` for those whose size or mtime it changed
        and those it removed (by the location's entries before and after), so that triggers
        see them too. Moves are not announced."""
        def before(c: sqlite3.Connection) -> tuple[int, snapshot.Snapshot] | None:
            if store.active_jobs(c, location_id, (INDEX_JOB,)):
                return None  # no rescan will start: no entries to read
            max_id = int(c.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])
            return max_id, snapshot.take(c, location_id)
        taken = await lib.db.run(before)
        if taken is None:
            return None
        max_id, seen = taken
        job_id = await request_rescan(lib, location_id, reason)
        if job_id is not None:
            self._announce[job_id] = (lib, location_id, max_id, seen)
        return job_id

    async def _announce_changes(self, job_id: str, completed: bool) -> None:
        lib, location_id, max_id, seen = self._announce.pop(job_id)
        if not completed:
            return
        try:
            now = await lib.db.run(lambda c: snapshot.take(c, location_id))
        except Exception as e:  # noqa: BLE001 - the library or location went meanwhile
            log.debug("no entries.* events after rescan %s: %s", job_id, e)
            return
        i = bisect.bisect_right(now.ids, max_id)
        created = now.ids[i:].tolist()
        removed, modified = snapshot.removed_and_modified(seen, now)
        for cls, ids in ((EntriesCreated, created), (EntriesModified, modified),
                         (EntriesRemoved, removed)):
            for k in range(0, len(ids), ANNOUNCE_CHUNK):
                self.bus.publish(cls(library_id=lib.id, location_id=location_id,
                                     entry_ids=ids[k:k + ANNOUNCE_CHUNK]))

    async def _listen(self) -> None:
        sub = self.bus.subscribe(_JOB_ENDS, internal=True)
        try:
            while (event := await sub.get()) is not None:
                if not isinstance(event, JobEvent) or event.name != INDEX_JOB:
                    continue
                if event.job_id in self._announce and not isinstance(event, JobPaused):
                    # Before the poke: the batches that waited for the job come after.
                    await self._announce_changes(event.job_id, isinstance(event, JobCompleted))
                for (lib_id, _), w in list(self._watchers.items()):
                    if lib_id == event.library_id:
                        w.poke()
        finally:
            sub.close()
