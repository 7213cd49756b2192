"""The daemon's figures for operators, in the Prometheus and OpenMetrics text formats.

Requests are counted where they are answered (``RequestMetrics.ok`` and ``.error``:
a few integer updates, no lock: the event loop's thread only). Everything else is read
when the figures are asked for (``snapshot`` then ``render``): jobs by state and
the queue from each library's database, event drops from the bus, and each
extension's accounting (``daemon/extensions/stats.py``; totals, which survive
restarts, so they are proper counters). ``prometheus_client`` writes the text:
its exposition code knows the escaping and the two formats' differences.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector, CollectorRegistry

from daemon.extensions.stats import StatsView

# Request latency buckets (seconds): a ping answers in tens of µs, a scan may take seconds.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0, 10.0)
OK = "ok"
_FIRST_BOUND = BUCKETS[0]


class MethodStats:
    """One method's answers: errors by code and a latency histogram of every answer."""

    __slots__ = ("errors", "buckets", "sum")

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one: over BUCKETS[-1]
        self.sum = 0.0

    def by_code(self) -> dict[str, int]:
        """Answers by outcome: the histogram counts every answer, so ``ok`` is the rest."""
        out = dict(self.errors)
        ok = sum(self.buckets) - sum(self.errors.values())
        if ok:
            out[OK] = ok
        return out


class RequestMetrics:
    """Socket requests by method and outcome, and their latency by method. Loop thread only.

    ``method`` must be a registered operation's name (or a fixed word such as
    ``unknown``): a client's made-up names must not become label values.
    Counted on every request, so kept to a few integer and float updates (an
    answer without error is only a histogram entry); the Prometheus families are
    built from them when the figures are asked for.
    """

    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}

    def ok(self, method: str, seconds: float) -> None:
        s = self.methods.get(method)
        if s is None:
            s = self.methods[method] = MethodStats()
        # Most requests fall in the first bucket: skip the search for them.
        s.buckets[0 if seconds <= _FIRST_BOUND else bisect.bisect_left(BUCKETS, seconds)] += 1
        s.sum += seconds

    def error(self, method: str, code: str, seconds: float) -> None:
        self.ok(method, seconds)
        errors = self.methods[method].errors
        errors[code] = errors.get(code, 0) + 1


@dataclass
class Snapshot:
    """Everything ``render`` writes, gathered on the event loop."""

    started_at: float
    requests: RequestMetrics
    jobs_by_state: dict[str, int]  # over every library
    running_jobs: int
    libraries: int
    extensions_loaded: int
    subscribers: int
    events_dropped: int
    subscribers_disconnected: int
    extensions: list[StatsView]


def render(snap: Snapshot, openmetrics: bool = False) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    out = (generate_openmetrics(registry)  # type: ignore[no-untyped-call]
           if openmetrics else generate_latest(registry))
    return out.decode()


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        yield GaugeMetricFamily("sd_start_time_seconds", "When the daemon started (Unix time)",
                                value=s.started_at)
        yield GaugeMetricFamily("sd_uptime_seconds", "Seconds since the daemon started",
                                value=max(0.0, time.time() - s.started_at))
        yield GaugeMetricFamily("sd_libraries", "Open libraries", value=s.libraries)
        yield GaugeMetricFamily("sd_extensions_loaded", "Loaded extensions",
                                value=s.extensions_loaded)
        yield from self._requests()
        jobs = GaugeMetricFamily("sd_jobs", "Jobs by state, over every library", labels=["state"])
        for state, n in sorted(s.jobs_by_state.items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("sd_job_queue_length", "Queued jobs waiting for a slot",
                                value=s.jobs_by_state.get("queued", 0))
        yield GaugeMetricFamily("sd_jobs_running", "Jobs running now", value=s.running_jobs)
        yield GaugeMetricFamily("sd_event_subscribers", "Event subscribers connected",
                                value=s.subscribers)
        yield CounterMetricFamily("sd_events_dropped", "Events dropped because a subscriber's "
                                  "queue was full", value=s.events_dropped)
        yield CounterMetricFamily("sd_event_subscribers_disconnected", "Subscribers "
                                  "disconnected for falling too far behind",
                                  value=s.subscribers_disconnected)
        yield from self._extensions()

    def _requests(self) -> Iterator[Metric]:
        r = self.snap.requests
        total = CounterMetricFamily("sd_requests", "Socket requests answered, by method and "
                                    "error code (ok: no error)", labels=["method", "code"])
        for method, stats in sorted(r.methods.items()):
            for code, n in sorted(stats.by_code().items()):
                total.add_metric([method, code], n)
        yield total
        hist = HistogramMetricFamily("sd_request_duration_seconds", "Time from reading a "
                                     "request to its answer, by method", labels=["method"])
        for method, lat in sorted(r.methods.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), lat.buckets, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([method], buckets, lat.sum)
        yield hist

    def _extensions(self) -> Iterator[Metric]:
        views = self.snap.extensions
        ext = ["extension"]

        def counter(name: str, doc: str, attr: str) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=ext)
            for v in views:
                m.add_metric([v.id], getattr(v.total, attr))
            return m

        yield counter("sd_extension_guest_cpu_seconds", "CPU time in guest code",
                      "guest_cpu_s")
        yield counter("sd_extension_host_seconds", "Host time spent on the extension's calls",
                      "host_s")
        yield counter("sd_extension_rate_limited_calls", "Calls refused by the rate limit",
                      "rate_limited")
        yield counter("sd_extension_log_lines", "Log lines written", "log_lines")
        yield counter("sd_extension_log_lines_suppressed", "Log lines suppressed by the "
                      "log rate limit", "log_suppressed")
        calls = CounterMetricFamily("sd_extension_calls", "spacedrive_call calls by operation",
                                    labels=[*ext, "method"])
        errors = CounterMetricFamily("sd_extension_call_errors", "spacedrive_call errors by "
                                     "code", labels=[*ext, "code"])
        jobs = CounterMetricFamily("sd_extension_jobs", "Job runs by outcome",
                                   labels=[*ext, "outcome"])
        memory = GaugeMetricFamily("sd_extension_peak_memory_bytes", "Largest linear memory "
                                   "of any of its instances", labels=ext)
        for v in views:
            for method, n in sorted(v.total.calls.items()):
                calls.add_metric([v.id, method], n)
            for code, n in sorted(v.total.errors.items()):
                errors.add_metric([v.id, code], n)
            for outcome, n in sorted(v.total.jobs.items()):
                jobs.add_metric([v.id, outcome], n)
            memory.add_metric([v.id], v.total.peak_memory_bytes)
        yield calls
        yield errors
        yield jobs
        yield memory
