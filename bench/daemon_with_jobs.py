"""The real daemon CLI with the bench's job types: ``python -m bench.daemon_with_jobs ARGS``."""

from bench.jobtypes import JOB_TYPES
from daemon.main import make_command

if __name__ == "__main__":
    make_command(JOB_TYPES)()
