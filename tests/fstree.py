"""Test trees on disk, what the index should say about them, and a daemon that is not all-powerful.

The tests run as root, and root reads a ``chmod 000`` directory regardless.
``UnprivilegedDaemon`` starts the daemon with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH removed from its capability bounding set (prctl
PR_CAPBSET_DROP before exec), so file permissions bind it as they bind any
ordinary user's daemon, and an unreadable directory really is unreadable.
"""

from __future__ import annotations

import ctypes
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT, Daemon

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2

REPORT = b"quarterly report\n" * 100
DUPLICATES = {"docs/report.txt", "docs/copy of report.txt", "photos/2023/img1.jpg",
              "photos/backup/img1.jpg", "photos/backup/img1 (2).jpg"}


def _drop_dac_caps() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class UnprivilegedDaemon(Daemon):
    """The tests' daemon, bound by file permissions even when the tests run as root."""

    def start(self, wait: bool = True) -> Daemon:
        cmd = [sys.executable, str(ROOT / "tests" / "jobs_daemon.py"), "--data-dir",
               str(self.data_dir), "--socket", str(self.socket), "--log-level", "debug",
               *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})},
                                     preexec_fn=_drop_dac_caps)
        if wait:
            self.wait_ready()
        return self


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path, *, locked: bool = True) -> Path:
    """Known duplicates (``DUPLICATES``), unique files, an unreadable dir and symlink loops."""
    rnd = random.Random(7)
    big = rnd.randbytes(300_000)
    big_other = rnd.randbytes(300_000)  # same size as ``big``, other content
    write(root / "docs" / "report.txt", REPORT)
    write(root / "docs" / "copy of report.txt", REPORT)
    write(root / "photos" / "2023" / "img1.jpg", big)
    write(root / "photos" / "2023" / "img2.jpg", big_other)
    write(root / "photos" / "backup" / "img1.jpg", big)
    write(root / "photos" / "backup" / "img1 (2).jpg", big)
    write(root / "music" / "song.mp3", rnd.randbytes(5000))
    write(root / "music" / "other.mp3", rnd.randbytes(5000))
    write(root / "notes" / "a.md", b"alpha")
    write(root / "notes" / "b.md", b"bravo")
    write(root / "empty1.txt", b"")
    write(root / "empty2.txt", b"")
    if locked:
        write(root / "locked" / "secret.txt", REPORT)  # a duplicate nobody can see
        (root / "locked").chmod(0)
    os.symlink(".", root / "loop")  # an ancestor: a loop if followed
    os.symlink("self", root / "docs" / "self")  # a cycle of links
    return root


def unlock(root: Path) -> None:
    """Make every directory removable again."""
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                p.chmod(0o755)


def expected_index(root: Path, unreadable: set[str] = frozenset()) -> dict[str, tuple[str, int]]:  # type: ignore[assignment]
    """{relative path: (kind, size)} the index should hold: no symlink followed,
    nothing below the ``unreadable`` directories."""
    out: dict[str, tuple[str, int]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        if rel in unreadable:
            continue
        with os.scandir(root / rel if rel else root) as it:
            for de in it:
                path = f"{rel}/{de.name}" if rel else de.name
                st = de.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    out[path] = ("dir", 0)
                    stack.append(path)
                elif stat.S_ISLNK(st.st_mode):
                    out[path] = ("symlink", st.st_size)
                elif stat.S_ISREG(st.st_mode):
                    out[path] = ("file", st.st_size)
                else:
                    out[path] = ("other", st.st_size)
    return out


def index_of(entries: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    return {e["path"]: (e["kind"], e["size"]) for e in entries}
