"""The real daemon with the tests' job types registered: ``python tests/jobs_daemon.py ARGS``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from jobtypes import TEST_JOB_TYPES

from daemon.main import make_command

if __name__ == "__main__":
    make_command(TEST_JOB_TYPES)()
