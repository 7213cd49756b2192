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
from pathlib import Path
from typing import Any

from conftest import Daemon

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

    preexec = staticmethod(_drop_dac_caps)


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


# --- duplicates: an adversarial tree and jdupes' answer -------------------------------------
TRAP_SIZE = 300_000
TRAP_BYTE = 50_000  # between cas_id's first and second 10 KiB sample: same cas_id, other bytes


def make_adversarial_tree(root: Path) -> Path:
    """Traps for a duplicate finder; ``jdupes -r`` (files, not names) is the reference.

    * ``trap/a`` and ``trap/b``: same size, same cas_id (every sampled region equal), one
      differing byte; ``trap/a-copy`` is a true copy of ``a``.
    * small files of one size differing in their first or last byte, and a true pair;
    * ``links/solo`` + ``links/solo-link``: one inode, two names, no other copy: no duplicate;
      ``links/h`` + ``links/h-link`` (one inode) and ``links/h-copy``: two files, all three
      names tagged (jdupes lists one or some names of the linked inode);
    * empty files; a symlink to a duplicate (never followed);
    * ``late/m1..m3`` and ``late/v1..v2``: the largest files, for tests that change them
      while a job runs; ``unreadable/u1..u3``: three copies, ``u3`` mode 000;
    * unique files of many sizes, some sharing a size with no equal content.
    """
    rnd = random.Random(14)
    a = rnd.randbytes(TRAP_SIZE)
    b = bytearray(a)
    b[TRAP_BYTE] ^= 0xFF
    write(root / "trap" / "a", a)
    write(root / "trap" / "b", bytes(b))
    write(root / "trap" / "a-copy", a)
    small = rnd.randbytes(4096)
    write(root / "small" / "x", small)
    write(root / "small" / "first", bytes([small[0] ^ 1]) + small[1:])
    write(root / "small" / "last", small[:-1] + bytes([small[-1] ^ 1]))
    write(root / "small" / "x-copy", small)
    write(root / "links" / "solo", rnd.randbytes(7000))
    os.link(root / "links" / "solo", root / "links" / "solo-link")
    h = rnd.randbytes(9000)
    write(root / "links" / "h", h)
    os.link(root / "links" / "h", root / "links" / "h-link")
    write(root / "links" / "h-copy", h)
    write(root / "empty" / "e1", b"")
    write(root / "empty" / "e2", b"")
    os.symlink("../trap/a", root / "links" / "to-a")
    m = rnd.randbytes(400_000)
    for name in ("m1", "m2", "m3"):
        write(root / "late" / name, m)
    v = rnd.randbytes(450_000)
    for name in ("v1", "v2"):
        write(root / "late" / name, v)
    u = rnd.randbytes(3000)
    for name in ("u1", "u2", "u3"):
        write(root / "unreadable" / name, u)
    (root / "unreadable" / "u3").chmod(0)
    for i in range(60):
        write(root / "unique" / f"f{i:02d}", rnd.randbytes(100 + (i % 20) * 10))
    return root


def jdupes(root: Path) -> set[str]:
    """Paths (relative to ``root``) that ``jdupes -r`` lists, run without root's file rights."""
    out = subprocess.run(["jdupes", "-r", "-q", str(root)], capture_output=True, check=True,
                         preexec_fn=_drop_dac_caps, timeout=120).stdout.decode()
    return {os.path.relpath(line, root) for line in out.splitlines() if line.strip()}


def files_of(root: Path, paths: set[str]) -> set[tuple[int, int]]:
    """The files (dev, inode) behind ``paths``: hard links are one file."""
    out = set()
    for p in paths:
        st = os.lstat(root / p)
        out.add((st.st_dev, st.st_ino))
    return out


def assert_same_as_jdupes(root: Path, tagged: set[str]) -> None:
    """The same files as jdupes, and the same names wherever a file has only one."""
    reference = jdupes(root)
    assert files_of(root, tagged) == files_of(root, reference), (sorted(tagged), sorted(reference))
    single = {p for p in tagged | reference if os.lstat(root / p).st_nlink == 1}
    assert tagged & single == reference & single
