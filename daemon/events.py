"""The Core's typed event bus.

Publishing never blocks: each subscriber has a bounded queue, and an event that
does not fit is dropped and counted for that subscriber alone. Publishing is
done on the event loop's thread (job contexts on worker threads hand their
events to the loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec

log = logging.getLogger("sd.events")


class Event(msgspec.Struct, tag_field="kind", kw_only=True):
    """Base of every event; ``kind`` is the tag, ``at`` the Unix time it happened."""

    at: float = msgspec.field(default_factory=time.time)
    library_id: str | None = None


class LibraryCreated(Event, tag="library.created"):
    name: str


class LibraryDeleted(Event, tag="library.deleted"):
    pass


class LibraryUnavailable(Event, tag="library.unavailable"):
    """The library was isolated: its database cannot be used (``reason`` names the file)."""

    reason: str


class JobEvent(Event, kw_only=True):
    job_id: str
    name: str


class JobQueued(JobEvent, tag="job.queued"):
    pass


class JobStarted(JobEvent, tag="job.started"):
    resumed: bool = False


class JobProgress(JobEvent, tag="job.progress"):
    progress: float
    message: str
    items: int
    bytes: int


class JobPaused(JobEvent, tag="job.paused"):
    pass


class JobResumed(JobEvent, tag="job.resumed"):
    pass


class JobCompleted(JobEvent, tag="job.completed"):
    """``output`` is the job's output when it encodes to 64 KiB or less, else null."""

    output: Any = None


class JobFailed(JobEvent, tag="job.failed"):
    error: str


class JobCancelled(JobEvent, tag="job.cancelled"):
    pass


class ExtensionLoaded(Event, tag="extension.loaded"):
    extension_id: str
    version: str


class ExtensionUnloaded(Event, tag="extension.unloaded"):
    extension_id: str


class ExtensionFailed(Event, tag="extension.failed"):
    extension_id: str
    error: str


class EntriesEvent(Event, kw_only=True):
    """Entries the live watcher changed in one batch (``daemon.locations.watch``)."""

    location_id: int
    entry_ids: list[int]


class EntriesCreated(EntriesEvent, tag="entries.created"):
    pass


class EntriesModified(EntriesEvent, tag="entries.modified"):
    """Size or modification time changed; their cas_id was cleared."""


class EntriesMoved(EntriesEvent, tag="entries.moved"):
    """Renamed or moved inside the location; ids, cas_ids and tags kept (a directory's
    descendants move with it and are not listed)."""


class EntriesRemoved(EntriesEvent, tag="entries.removed"):
    """Gone from disk (or moved out of the location), with their descendants."""


ENTRY_EVENTS: dict[str, type[EntriesEvent]] = {
    "entries.created": EntriesCreated, "entries.modified": EntriesModified,
    "entries.moved": EntriesMoved, "entries.removed": EntriesRemoved,
}


class EventsDropped(Event, tag="events.dropped"):
    """Sent to one subscriber: this many events did not fit in its queue."""

    count: int


AnyEvent = (
    LibraryCreated | LibraryDeleted | LibraryUnavailable | JobQueued | JobStarted | JobProgress | JobPaused
    | JobResumed | JobCompleted | JobFailed | JobCancelled | ExtensionLoaded
    | ExtensionUnloaded | ExtensionFailed | EntriesCreated | EntriesModified | EntriesMoved
    | EntriesRemoved | EventsDropped
)

EVENT_KINDS: frozenset[str] = frozenset(
    cls.__struct_config__.tag
    for cls in AnyEvent.__args__
)


class Subscription:
    """One subscriber's bounded queue. Drops are counted and reported in order."""

    def __init__(
        self,
        bus: EventBus,
        kinds: frozenset[str] | None,
        library_id: str | None,
        maxsize: int,
        drop_limit: int,
        internal: bool = False,
    ) -> None:
        self._bus = bus
        self.internal = internal
        self.kinds = kinds
        self.library_id = library_id
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._drop_limit = drop_limit
        self._pending_drops = 0
        self.dropped_total = 0
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def wants(self, event: Event) -> bool:
        if self.kinds is not None and event.__struct_config__.tag not in self.kinds:
            return False
        return self.library_id is None or event.library_id == self.library_id

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            self._pending_drops += 1
            self.dropped_total += 1
            self._bus.dropped_total += 1
            if self.dropped_total >= self._drop_limit:
                log.warning("subscriber dropped %d events; disconnecting it", self.dropped_total)
                self._bus.disconnected_total += 1
                self.close()
            return
        if self._pending_drops:
            self._queue.append(EventsDropped(count=self._pending_drops))
            self._pending_drops = 0
        self._queue.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Event | None:
        """Next event, or None once the subscription is closed."""
        while not self._queue:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._unsubscribe(self)
            self._wake()


class EventBus:
    """Fan-out of Core events to in-process listeners and RPC subscribers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_size: int = 1024,
                 drop_limit: int = 100_000) -> None:
        self._loop = loop
        self._subs: list[Subscription] = []
        self._queue_size = queue_size
        self._drop_limit = drop_limit
        # Over every subscriber there has been (for `sd metrics`).
        self.dropped_total = 0
        self.disconnected_total = 0

    def subscribe(self, kinds: Iterable[str] | None = None,
                  library_id: str | None = None, *, internal: bool = False) -> Subscription:
        """``internal``: a listener of the daemon's own that drains its queue on the loop
        (the watcher, the trigger service): never dropped, never disconnected."""
        size, limit = (sys.maxsize, sys.maxsize) if internal else (self._queue_size,
                                                                    self._drop_limit)
        sub = Subscription(self, frozenset(kinds) if kinds is not None else None, library_id,
                           size, limit, internal)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    @property
    def subscriber_count(self) -> int:
        """Clients streaming events (not the daemon's own listeners)."""
        return sum(1 for sub in self._subs if not sub.internal)

    def publish(self, event: Event) -> None:
        """Deliver to every matching subscriber. Call on the loop's thread."""
        for sub in tuple(self._subs):
            if sub.wants(event):
                sub.offer(event)
