"""Log to stderr, one line per event, with level and logger name.

Under systemd, stderr is the journal (``$JOURNAL_STREAM``): lines then start with a
syslog priority (``<3>`` error ... ``<7>`` debug) instead of a timestamp, which the
journal records itself, so ``journalctl -p warning`` filters by level.
"""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities for journald's stream parser (sd-daemon(3) prefixes).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<N>`` on every line: journald makes each line an entry (a traceback too)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd handed us (``$JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def setup_logging(level: str) -> None:
    """Log to stderr: ``<N>``-prefixed lines for journald, timestamped lines otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
