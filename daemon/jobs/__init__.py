"""The persistent job system: job types, contexts, and one manager per library."""

from daemon.jobs.context import Interrupt, Interrupted, JobContext
from daemon.jobs.types import JobRegistry, JobType

__all__ = ["Interrupt", "Interrupted", "JobContext", "JobRegistry", "JobType"]
