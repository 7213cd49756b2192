"""Locations, their index (entries), content identity, tags and extension storage.

``JOB_TYPES`` are the native jobs every Core registers (``Core.open``).
"""

from daemon.jobs.types import JobType
from daemon.locations.content import IdentifyInput, identify_job
from daemon.locations.indexer import IndexInput, index_job

INDEX_JOB = "locations.index"
IDENTIFY_JOB = "locations.identify"

JOB_TYPES = [
    JobType(INDEX_JOB, True, IndexInput, index_job,
            "walk a location and bring its entries up to date (incremental, resumable)"),
    JobType(IDENTIFY_JOB, True, IdentifyInput, identify_job,
            "compute the content hash (cas_id) of every file of a location that has none"),
]
