"""Starting an indexer job for a location (asked by a client or by the live watcher)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.locations import INDEX_JOB, store

if TYPE_CHECKING:
    from daemon.libraries.manager import Library


async def dispatch_index(lib: Library, location_id: int, *, identify: bool = False,
                         reason: str = "") -> str:
    """Queue a ``locations.index`` job for the location and record it as its indexer job;
    returns the job's id. ``reason`` becomes the job's first warning."""
    job_id = await lib.jobs.dispatch_by_name(INDEX_JOB, {"location_id": location_id,
                                                         "identify": identify,
                                                         "reason": reason})
    await lib.db.run(lambda c: store.set_index_job(c, location_id, job_id))
    return job_id
