"""Opening a file inside a location (daemon/locations/fs.py): what is refused leaves no fd open."""

from __future__ import annotations

import errno
import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon import errors
from daemon.locations import fs


def _open_fds() -> set[str]:
    gc.collect()  # an unreferenced connection of another test closes its files now, not mid-test
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "file.txt").write_bytes(b"hello")
    os.mkfifo(tmp_path / "d" / "fifo")
    (tmp_path / "d" / "link").symlink_to("file.txt")
    return tmp_path


def _with_module(root: Path) -> Iterator[Callable[[str], int]]:
    yield lambda rel: fs.open_file(str(root), rel)


def _with_dirs(root: Path) -> Iterator[Callable[[str], int]]:
    dirs = fs.Dirs(str(root))
    dirs.lstat("d/file.txt")  # its directory fd stays open; it is no leak
    try:
        yield lambda rel: dirs.open_file(rel)[0]
    finally:
        dirs.close()


@pytest.fixture(params=[_with_module, _with_dirs], ids=["open_file", "Dirs.open_file"])
def opener(request: pytest.FixtureRequest, root: Path) -> Iterator[Callable[[str], int]]:
    yield from request.param(root)


@pytest.mark.parametrize(("rel", "error", "words"), [
    ("d/sub", errors.InvalidState, "not a regular file (it is a dir)"),
    ("d/fifo", errors.InvalidState, "not a regular file (it is a other)"),
    ("d/link", errors.InvalidState, "symbolic link"),
    ("d/gone", errors.NotFound, "no longer exists"),
])
def test_refused_open_leaves_no_fd(opener: Callable[[str], int], rel: str,
                                   error: type[errors.SdError], words: str) -> None:
    before = _open_fds()
    with pytest.raises(error) as e:
        opener(rel)
    assert words in e.value.message
    assert _open_fds() == before


def test_opened_file_reads(opener: Callable[[str], int]) -> None:
    before = _open_fds()
    fd = opener("d/file.txt")
    try:
        assert fs.read_range(fd, 0, 100) == b"hello"
    finally:
        os.close(fd)
    assert _open_fds() == before


def _failing_fstat(real: Callable[[int], os.stat_result]) -> Callable[[int], os.stat_result]:
    def fstat(fd: int) -> os.stat_result:
        real(fd)  # a real fd, really open: only its status cannot be read
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    return fstat


def test_failed_fstat_closes_the_file_and_is_an_sd_error(root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error reading the status of the file just opened (fault injected into
    os.fstat): open_file closes it and says so as the SdError its callers expect."""
    before = _open_fds()
    with monkeypatch.context() as m:
        m.setattr(fs.os, "fstat", _failing_fstat(os.fstat))
        with pytest.raises(errors.InvalidState) as e:
            fs.open_file(str(root), "d/file.txt")
    assert e.value.message == f"cannot open d/file.txt: {os.strerror(errno.EIO)}"
    assert _open_fds() == before


def test_dirs_failed_fstat_closes_the_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dirs.open_file passes the OSError on (the content hasher reports it as a warning)
    and closes the file."""
    dirs = fs.Dirs(str(root))
    try:
        dirs.lstat("d/file.txt")
        before = _open_fds()
        with monkeypatch.context() as m:
            m.setattr(fs.os, "fstat", _failing_fstat(os.fstat))
            with pytest.raises(OSError) as e:
                dirs.open_file("d/file.txt")
        assert e.value.errno == errno.EIO
        assert _open_fds() == before
    finally:
        dirs.close()
