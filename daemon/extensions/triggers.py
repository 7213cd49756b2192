"""Manifest triggers: an extension's job dispatched when entries change.

A manifest's ``triggers`` (``manifest.Trigger``) name an ``entries.*`` event kind
and a job the extension registered. The host collects the entry ids of matching
events per trigger and library, and once ``debounce_ms`` has passed without a new
one (at most ten debounce periods after the first), dispatches the job with
``{..trigger's state, "trigger": kind, "entry_ids": [...]}`` as its state. One job
at a time per trigger and library: ids that arrive while it is queued or running
wait and go, together, into the next job when it ends (bursts coalesce). At most
``max_entries`` ids per job; the rest go to the next one.

Limits are the extension's own: a library the manifest does not grant is refused
(counted and shown by ``sd ext info``), each dispatch takes one request from the
extension's rate (``requests_per_minute``; a refused dispatch is retried a second
later), and the job runs under its concurrency gate like any of its jobs.
Triggers can be paused per extension (remembered across restarts); events while
paused are counted and dropped. Ids collected and not yet dispatched are kept in
``<plugin-dir>/triggers-pending.json`` and dispatched after a restart (even after
``kill -9``); a kill between dispatching a job and noting it may dispatch those ids
twice, never lose them. The file is a journal, one JSON line per change: ids added
to a slot (``["+", ext, trigger, library, ids]``, only those not already pending)
or taken by a job (``"-"``), so an event costs a write of its own ids, not of every
id pending. It is rewritten whole (only what is pending) at start, when nothing is
pending any more, on the rare clears, after a failed write, and once it is several
times the size of what it holds. A torn last line (a kill mid-write) is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from daemon import errors
from daemon.events import ENTRY_EVENTS, EntriesEvent, EventBus, JobEvent
from daemon.extensions.manifest import Trigger

if TYPE_CHECKING:
    from daemon.extensions.manager import PluginManager
    from daemon.libraries.manager import LibraryManager

log = logging.getLogger("sd.triggers")
_JOB_ENDS = ("job.completed", "job.failed", "job.cancelled")
RETRY_S = 1.0
# The journal is rewritten once past this size and COMPACT_RATIO times what it holds.
COMPACT_BYTES = 1 << 20
COMPACT_RATIO = 4

_Key = tuple[str, int, str]  # extension, trigger index, library
_Line = tuple[Literal["+", "-"], str, int, str, list[int]]  # added or taken, _Key, ids
_Legacy = list[tuple[str, int, str, list[int]]]  # the file before it was a journal


class TriggerInfo(msgspec.Struct):
    """One trigger as ``sd ext info`` shows it (counts since the daemon started)."""

    on: str
    job: str
    debounce_ms: int
    paused: bool
    pending: int  # entry ids waiting for the next job, every library
    running_jobs: list[str]
    fired: int  # jobs dispatched
    refused: int  # events from libraries the extension may not see
    ignored: int  # events while paused
    last_job: str | None = None
    last_error: str | None = None


@dataclass(eq=False)
class _Slot:
    """One trigger in one library."""

    ids: dict[int, None] = field(default_factory=dict)  # ordered, unique
    job_id: str | None = None
    dispatching: bool = False  # between taking the ids and having the job's id
    timer: asyncio.TimerHandle | None = None
    first: float = 0.0


@dataclass(eq=False)
class _Counts:
    fired: int = 0
    refused: int = 0
    ignored: int = 0
    last_job: str | None = None
    last_error: str | None = None


class TriggerService:
    def __init__(self, bus: EventBus, plugins: PluginManager, libraries: LibraryManager) -> None:
        self._bus = bus
        self._plugins = plugins
        self._libraries = libraries
        self._slots: dict[_Key, _Slot] = {}
        self._counts: dict[tuple[str, int], _Counts] = {}
        self._by_job: dict[str, tuple[str, int, str]] = {}
        self._firing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._paused_file = plugins.plugin_dir / "triggers-paused.json"
        self._paused: set[str] | None = None
        # Ids collected and not yet dispatched, kept across a stop or a kill -9.
        self._pending_file = plugins.plugin_dir / "triggers-pending.json"
        self._journal_bytes = 0  # the file's size as written by this process
        self._rewrite = True  # the file must be rewritten whole before the next append

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Listen for events; ids pending at the last stop are dispatched once debounced."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._listen(), name="triggers")
        saved = self._load()
        for (ext_id, i, lib_id), ids in saved.items():
            trigger = self._trigger(ext_id, i)
            if trigger is None or not ids:
                continue  # the extension or its trigger is gone
            slot = self._slots.setdefault((ext_id, i, lib_id), _Slot())
            slot.ids.update(ids)
            self._arm(ext_id, i, lib_id, slot, trigger)
        if saved:
            log.info("%d trigger batches pending from the last run", len(saved))
        self._save()

    def _load(self) -> dict[_Key, dict[int, None]]:
        """The ids the file holds pending, per slot (its old one-list form too)."""
        try:
            data = self._pending_file.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            legacy = msgspec.json.decode(data, type=_Legacy)
            return {(e, i, lib): dict.fromkeys(ids) for e, i, lib, ids in legacy}
        except msgspec.DecodeError:
            pass
        saved: dict[_Key, dict[int, None]] = {}
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw:
                continue
            try:
                op, ext_id, i, lib_id, ids = msgspec.json.decode(raw, type=_Line)
            except msgspec.DecodeError as e:
                log.error("%s: ignoring line %d: %s", self._pending_file, n, e)
                continue
            slot = saved.setdefault((ext_id, i, lib_id), {})
            if op == "+":
                slot.update(dict.fromkeys(ids))
            else:
                for entry_id in ids:
                    slot.pop(entry_id, None)
        return saved

    def _save(self) -> None:
        """Rewrite the file whole: the pending ids, one line a slot."""
        lines = b"".join(msgspec.json.encode(("+", *k, list(s.ids))) + b"\n"
                         for k, s in self._slots.items() if s.ids)
        if not lines and not self._pending_file.exists():
            self._rewrite = False
            return
        self._rewrite = True
        tmp = self._pending_file.with_suffix(".tmp")
        tmp.write_bytes(lines)
        os.replace(tmp, self._pending_file)
        self._journal_bytes = len(lines)
        self._rewrite = False

    def _append(self, changes: list[tuple[str, _Key, list[int]]]) -> None:
        """Note ids added to (``+``) or taken from (``-``) slots, already done in memory."""
        if self._rewrite or not any(s.ids for s in self._slots.values()):
            self._save()
            return
        data = b"".join(msgspec.json.encode((op, *key, ids)) + b"\n"
                        for op, key, ids in changes if ids)
        if not data:
            return
        self._rewrite = True  # until the whole line is down: a torn one is never appended to
        fd = os.open(self._pending_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self._rewrite = False
        self._journal_bytes += len(data)
        if self._journal_bytes > COMPACT_BYTES:
            held = sum(len(s.ids) for s in self._slots.values())
            if self._journal_bytes > COMPACT_RATIO * 16 * (held + len(self._slots)):
                self._save()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()

    # --- pausing and reporting ---------------------------------------------------------------
    def paused(self) -> set[str]:
        """Extensions whose triggers are paused: read once (the daemon is the file's only
        writer), then kept in memory; every entries event asks."""
        if self._paused is None:
            try:
                self._paused = set(msgspec.json.decode(self._paused_file.read_bytes(),
                                                       type=list[str]))
            except (FileNotFoundError, msgspec.DecodeError):
                self._paused = set()
        return self._paused

    def set_paused(self, ext_id: str, paused: bool) -> None:
        ids = set(self.paused())
        (ids.add if paused else ids.discard)(ext_id)
        tmp = self._paused_file.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(sorted(ids)))
        os.replace(tmp, self._paused_file)
        self._paused = ids
        if paused:
            for key, slot in self._slots.items():
                if key[0] == ext_id:
                    slot.ids.clear()
            self._save()
        log.info("triggers of %s %s", ext_id, "paused" if paused else "resumed")

    def describe(self, ext_id: str, triggers: list[Trigger]) -> list[TriggerInfo]:
        paused = ext_id in self.paused()
        out = []
        for i, t in enumerate(triggers):
            c = self._counts.get((ext_id, i), _Counts())
            slots = [s for k, s in self._slots.items() if k[:2] == (ext_id, i)]
            out.append(TriggerInfo(
                t.on, t.job, t.debounce_ms, paused, sum(len(s.ids) for s in slots),
                [s.job_id for s in slots if s.job_id], c.fired, c.refused, c.ignored,
                c.last_job, c.last_error))
        return out

    # --- events ---------------------------------------------------------------------------------
    async def _listen(self) -> None:
        sub = self._bus.subscribe([*ENTRY_EVENTS, *_JOB_ENDS], internal=True)
        try:
            while (event := await sub.get()) is not None:
                try:
                    if isinstance(event, EntriesEvent):
                        self._on_entries(event)
                    elif isinstance(event, JobEvent):
                        self._on_job_end(event.job_id)
                except Exception:
                    log.exception("trigger handling failed for %s", event)
        finally:
            sub.close()

    def _on_entries(self, event: EntriesEvent) -> None:
        kind = event.__struct_config__.tag
        lib_id = event.library_id
        if lib_id is None:
            return
        added: list[tuple[str, _Key, list[int]]] = []
        for ext_id, manifest, policy in self._plugins.triggering():
            for i, t in enumerate(manifest.triggers):
                if t.on != kind:
                    continue
                counts = self._counts.setdefault((ext_id, i), _Counts())
                if ext_id in self.paused():
                    counts.ignored += 1
                    continue
                if not policy.allows_library(lib_id):
                    counts.refused += 1
                    counts.last_error = (f"refused: extension {ext_id} has no access to "
                                         f"library {lib_id}")
                    log.info("trigger %s of %s %s", t.on, ext_id, counts.last_error)
                    continue
                key = (ext_id, i, lib_id)
                slot = self._slots.setdefault(key, _Slot())
                new = [x for x in dict.fromkeys(event.entry_ids) if x not in slot.ids]
                slot.ids.update(dict.fromkeys(new))
                added.append(("+", key, new))
                self._arm(ext_id, i, lib_id, slot, t)
        if added:
            self._append(added)

    def _arm(self, ext_id: str, i: int, lib_id: str, slot: _Slot, t: Trigger,
             delay: float | None = None) -> None:
        if slot.job_id is not None or slot.dispatching:
            return  # dispatched when the running job ends
        loop = asyncio.get_running_loop()
        now = loop.time()
        if slot.timer is not None:
            slot.timer.cancel()
        else:
            slot.first = now
        if delay is None:
            debounce = t.debounce_ms / 1000
            delay = max(0.0, min(debounce, slot.first + 10 * debounce - now))
        slot.timer = loop.call_later(delay, self._spawn, ext_id, i, lib_id)

    def _spawn(self, ext_id: str, i: int, lib_id: str) -> None:
        task = asyncio.create_task(self._fire(ext_id, i, lib_id))
        self._firing.add(task)
        task.add_done_callback(self._firing.discard)

    def _on_job_end(self, job_id: str) -> None:
        key = self._by_job.pop(job_id, None)
        if key is None:
            return
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.job_id = None
        if slot.ids:
            trigger = self._trigger(*key[:2])
            if trigger is not None:
                self._arm(*key, slot, trigger, delay=0)

    def _trigger(self, ext_id: str, i: int) -> Trigger | None:
        for eid, manifest, _ in self._plugins.triggering():
            if eid == ext_id and i < len(manifest.triggers):
                return manifest.triggers[i]
        return None

    async def _fire(self, ext_id: str, i: int, lib_id: str) -> None:
        key = (ext_id, i, lib_id)
        slot = self._slots.get(key)
        if slot is None or slot.job_id is not None or slot.dispatching:
            return
        slot.timer = None
        found = next(((m, p) for eid, m, p in self._plugins.triggering() if eid == ext_id), None)
        counts = self._counts.setdefault((ext_id, i), _Counts())
        if found is None or i >= len(found[0].triggers) or ext_id in self.paused():
            slot.ids.clear()  # unloaded or paused meanwhile
            self._save()
            return
        manifest, policy = found
        t = manifest.triggers[i]
        if not slot.ids:
            return
        if not policy.take_request():
            counts.last_error = f"rate limited: retrying in {RETRY_S:.0f} s"
            self._arm(ext_id, i, lib_id, slot, t, delay=RETRY_S)
            return
        ids = list(slot.ids)[:t.max_entries]
        state: dict[str, Any] = {**t.state, "trigger": t.on, "entry_ids": ids}
        slot.dispatching = True
        try:
            export = self._plugins.job_export(ext_id, t.job)
            lib = self._libraries.get(lib_id)
            job_id = await lib.jobs.dispatch_by_name("wasm_job", {
                "extension_id": ext_id, "export_fn": export,
                "state_json": msgspec.json.encode(state).decode()})
        except errors.SdError as e:
            counts.last_error = f"cannot dispatch {t.job}: {e.message}"
            log.warning("trigger %s of %s: %s", t.on, ext_id, counts.last_error)
            slot.ids.clear()
            self._save()
            return
        finally:
            slot.dispatching = False
        for entry_id in ids:
            del slot.ids[entry_id]
        self._append([("-", key, ids)])  # after the job is persisted: a kill in between
        # dispatches them twice
        slot.job_id = job_id
        self._by_job[job_id] = key
        counts.fired += 1
        counts.last_job = job_id
        log.info("trigger %s of %s: job %s with %d entries", t.on, ext_id, job_id, len(ids))
