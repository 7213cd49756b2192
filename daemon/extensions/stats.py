"""Per-extension accounting: what each extension costs, since start and in total.

The hot path (``spacedrive_call``, ``spacedrive_log``) only bumps a ``Tally`` of
its own instance: no lock, since an instance is used by one thread at a time.
Every call is counted; of each operation's calls the first and one in
``TIME_ONE_IN`` are timed, and the host time of the rest is estimated from those.
A tally is merged into its extension's ``ExtensionStats`` when the run ends (and
every second or so while a job checks in), under that extension's lock. Totals
are kept in ``<plugin-dir>/stats.json``, written atomically every few seconds
while something changed and at shutdown; after a ``kill -9`` the totals lack at
most the last few seconds.

Guest CPU time is the CPU time of the guest's thread during a job run or
``plugin_init`` less the host's time on its calls (wall-clock, so the figure is
a lower bound when a call waited), floored at 0.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

log = logging.getLogger("sd.extensions")

JOB_OUTCOMES = ("completed", "failed", "paused", "cancelled")


# Of each operation's calls in a tally, the first and then one in this many are timed;
# the host time of the others is estimated from those. Timing every call cost about 3%
# of the fastest call (a ping); see README "What an extension costs".
TIME_ONE_IN = 16
TIME_MASK = TIME_ONE_IN - 1


@dataclass(eq=False, slots=True)
class Tally:
    """One instance's figures since its last merge. Used by one thread at a time;
    its dicts are cleared in place (the host functions hold them)."""

    calls: dict[str, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    timed_s: float = 0.0
    timed_calls: int = 0
    log_lines: int = 0
    log_suppressed: int = 0
    merged_at: float = 0.0  # time.monotonic() of the last merge

    @property
    def host_s(self) -> float:
        """Host time on the calls since the last merge, from the timed ones."""
        if not self.timed_calls:
            return 0.0
        return self.timed_s * max(self.timed_calls, sum(self.calls.values())) / self.timed_calls


class Figures(msgspec.Struct, kw_only=True):
    """One extension's figures over some span (on the wire and in stats.json)."""

    guest_cpu_s: float = 0.0
    host_s: float = 0.0
    calls: dict[str, int] = {}
    errors: dict[str, int] = {}  # by error code (JSON object keys are strings)
    rate_limited: int = 0
    log_lines: int = 0
    log_suppressed: int = 0
    peak_memory_bytes: int = 0
    jobs: dict[str, int] = {}  # by outcome: completed, failed, paused, cancelled

    def add(self, other: Figures) -> None:
        self.guest_cpu_s += other.guest_cpu_s
        self.host_s += other.host_s
        _add(self.calls, other.calls)
        _add(self.errors, other.errors)
        self.rate_limited += other.rate_limited
        self.log_lines += other.log_lines
        self.log_suppressed += other.log_suppressed
        self.peak_memory_bytes = max(self.peak_memory_bytes, other.peak_memory_bytes)
        _add(self.jobs, other.jobs)

    def copy(self) -> Figures:
        out = Figures()
        out.add(self)
        return out


class StatsView(msgspec.Struct):
    """``query:extensions.stats.v1``: one extension's figures."""

    id: str
    since_start: Figures
    total: Figures
    started_at: float


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


RATE_LIMITED_CODE = -32004


class ExtensionStats:
    """One extension's figures: since this daemon started, and before it (persisted)."""

    def __init__(self, extension_id: str, before: Figures | None = None) -> None:
        self.extension_id = extension_id
        self.before = before or Figures()
        self.since_start = Figures()
        self._lock = threading.Lock()
        self.dirty = False

    def merge(self, tally: Tally, *, guest_cpu_s: float = 0.0, peak_memory: int = 0,
              outcome: str | None = None) -> None:
        """Add a tally (which is emptied) and a run's figures. Any thread."""
        host_s = tally.host_s
        with self._lock:
            f = self.since_start
            f.host_s += host_s
            _add(f.calls, tally.calls)
            for code, n in tally.errors.items():
                key = str(code)
                f.errors[key] = f.errors.get(key, 0) + n
                if code == RATE_LIMITED_CODE:
                    f.rate_limited += n
            f.log_lines += tally.log_lines
            f.log_suppressed += tally.log_suppressed
            f.guest_cpu_s += max(0.0, guest_cpu_s)
            f.peak_memory_bytes = max(f.peak_memory_bytes, peak_memory)
            if outcome is not None:
                f.jobs[outcome] = f.jobs.get(outcome, 0) + 1
            self.dirty = True
        tally.calls.clear()
        tally.errors.clear()
        tally.timed_s, tally.timed_calls = 0.0, 0
        tally.log_lines = tally.log_suppressed = 0
        tally.merged_at = time.monotonic()

    def view(self, started_at: float) -> StatsView:
        with self._lock:
            since = self.since_start.copy()
            total = self.before.copy()
            total.add(since)
        return StatsView(self.extension_id, since, total, started_at)

    def total(self) -> Figures:
        with self._lock:
            total = self.before.copy()
            total.add(self.since_start)
            return total


class StatsBook:
    """Every extension's stats, and their persistence in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started_at = time.time()
        self._stats: dict[str, ExtensionStats] = {}
        self._lock = threading.Lock()
        for ext_id, figures in self._read().items():
            self._stats[ext_id] = ExtensionStats(ext_id, figures)

    def of(self, extension_id: str) -> ExtensionStats:
        stats = self._stats.get(extension_id)
        if stats is None:
            with self._lock:
                stats = self._stats.setdefault(extension_id, ExtensionStats(extension_id))
        return stats

    def ids(self) -> list[str]:
        return sorted(self._stats)

    def views(self) -> list[StatsView]:
        return [self._stats[i].view(self.started_at) for i in self.ids()]

    def save_if_dirty(self) -> None:
        """Write the totals if anything changed (atomically: a crash leaves the old file)."""
        stats = list(self._stats.values())
        if not any(s.dirty for s in stats):
            return
        for s in stats:
            s.dirty = False
        totals = {s.extension_id: s.total() for s in stats}
        tmp = self.path.with_suffix(".json.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(msgspec.json.encode(totals))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot save extension stats to %s: %s", self.path, e)
            for s in stats:
                s.dirty = True

    def _read(self) -> dict[str, Figures]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warning("cannot read extension stats %s: %s; totals start again", self.path, e)
            return {}
        try:
            return msgspec.json.decode(raw, type=dict[str, Figures])
        except msgspec.DecodeError as e:
            log.warning("extension stats %s are damaged (%s); totals start again", self.path, e)
            return {}
