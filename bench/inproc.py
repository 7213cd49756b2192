"""An in-process Core for the rows that measure below the socket."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from daemon.app import App, open_app
from daemon.config import DaemonConfig, ExtensionLimits
from daemon.core import Core
from daemon.jobs.types import JobType

# The default ceiling (600,000 requests a minute per extension, i.e. 10,000/s)
# is a policy limit, below the rates measured here; the bench raises it so the
# token bucket is still checked on every call but never refuses one.
BENCH_RATE_PER_MINUTE = 10**9


async def bench_app(data_dir: Path, *, job_types: Iterable[JobType] = (),
                    max_running_jobs: int | None = None) -> App:
    """A Core with its dispatcher, no bundled extensions and the rate ceiling raised."""
    extra = {} if max_running_jobs is None else {"max_running_jobs": max_running_jobs}
    config = DaemonConfig(
        data_dir=data_dir, socket_path=data_dir / "unused.sock",
        extension_limits=ExtensionLimits(requests_per_minute=BENCH_RATE_PER_MINUTE),
        **extra)  # type: ignore[arg-type]
    return await open_app(data_dir, config, job_types=job_types, load_extensions=False)


async def bench_core(data_dir: Path, *, job_types: Iterable[JobType] = (),
                     max_running_jobs: int | None = None) -> Core:
    """A Core on ``data_dir`` with no bundled extensions and the rate ceiling raised."""
    return (await bench_app(data_dir, job_types=job_types,
                            max_running_jobs=max_running_jobs)).core
