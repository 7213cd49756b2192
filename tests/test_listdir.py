"""daemon.locations._listdir (C) against os.scandir + lstat on real trees.

The indexer's listing of a directory is what the C module reads; the reference here is
the walk the indexer did in Python before it (os.scandir and DirEntry.stat without
following links), so the two must agree child for child, field for field.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.locations import _listdir, indexer

Child = tuple[str, str, int, int, int, int, str]


def reference(path: Path) -> tuple[list[Child], list[str], list[str], list[bytes]]:
    """What os.scandir + lstat say, in the shape listdir returns (readdir order)."""
    children: list[Child] = []
    dirs: list[str] = []
    links: list[str] = []
    bad: list[bytes] = []
    with os.scandir(os.fsencode(path)) as it:
        for de in it:
            try:
                name = de.name.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(de.name)
                continue
            st = de.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                dot = name.rfind(".")
                ext = name[dot + 1:].lower() if dot > 0 else ""
                children.append((name, "file", st.st_size, st.st_mtime_ns, st.st_dev,
                                 st.st_ino, ext))
                continue
            if stat.S_ISDIR(st.st_mode):
                kind, size = "dir", 0
                dirs.append(name)
            elif stat.S_ISLNK(st.st_mode):
                kind, size = "symlink", st.st_size
                links.append(name)
            else:
                kind, size = "other", st.st_size
            children.append((name, kind, size, st.st_mtime_ns, st.st_dev, st.st_ino, ""))
    return children, dirs, links, bad


def listed(path: Path) -> tuple[list[Child], list[str], list[str], list[bytes], int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _listdir.listdir(fd)
    finally:
        os.close(fd)


@pytest.fixture
def odd_dir(tmp_path: Path) -> Path:
    """Every kind of child, names the extension rule has to get right, and a name that
    is not UTF-8."""
    d = tmp_path / "odd"
    d.mkdir()
    for name, size in [("plain.txt", 5), ("UPPER.JPG", 7), ("two.dots.Tar.GZ", 3),
                       (".hidden", 1), (".hidden.Conf", 2), ("noext", 0), ("trailing.", 4),
                       ("été.ÉTÉ", 9), ("Straße.ß", 6), ("ǅ.Ǆ", 2), ("space name.Md", 11)]:
        (d / name).write_bytes(b"x" * size)
    (d / "sub").mkdir()
    (d / "sub.D").mkdir()
    os.symlink("plain.txt", d / "link-to-file")
    os.symlink("sub", d / "link-to-dir.lnk")
    os.symlink("nowhere/at/all", d / "dangling")
    os.symlink("loop", d / "loop")
    os.mkfifo(d / "fifo.pipe")
    with open(os.path.join(os.fsencode(d), b"bad-\xff\xfe.txt"), "wb") as f:
        f.write(b"!")
    with open(os.path.join(os.fsencode(d), b"surrogate-\xed\xa0\x80"), "wb") as f:
        f.write(b"!")
    # An mtime whose nanoseconds do not fit 64 bits (year 2286), where the fs keeps it.
    far = d / "far-future.bin"
    far.write_bytes(b"")
    try:
        os.utime(far, ns=(10**19 + 5, 10**19 + 5))
    except OSError:
        pass
    return d


def test_listing_matches_scandir_and_lstat(odd_dir: Path) -> None:
    children, dirs, links, bad, failed = listed(odd_dir)
    ref_children, ref_dirs, ref_links, ref_bad = reference(odd_dir)
    assert children == ref_children
    assert (dirs, links, sorted(bad), failed) == (ref_dirs, ref_links, sorted(ref_bad), 0)
    by_name = {c[0]: c for c in children}
    assert by_name["UPPER.JPG"][6] == "jpg"
    assert by_name["two.dots.Tar.GZ"][6] == "gz"
    assert by_name[".hidden"][6] == "" and by_name[".hidden.Conf"][6] == "conf"
    assert by_name["été.ÉTÉ"][6] == "été" and by_name["ǅ.Ǆ"][6] == "ǆ"
    assert by_name["Straße.ß"][6] == "ß"
    assert by_name["sub.D"][1:3] == ("dir", 0) and by_name["sub.D"][6] == ""
    assert by_name["link-to-dir.lnk"][1:3] == ("symlink", len("sub"))
    assert by_name["fifo.pipe"][1] == "other"
    assert sorted(bad) == [b"bad-\xff\xfe.txt", b"surrogate-\xed\xa0\x80"]


def test_big_directory(tmp_path: Path) -> None:
    """More children than any buffer starts with, names of many lengths."""
    d = tmp_path / "big"
    d.mkdir()
    for i in range(3000):
        (d / f"f{i:05d}.{'ABCDEFGH'[i % 8]}{'x' * (i % 200)}").write_bytes(b"")
    children, *_ = listed(d)
    assert children == reference(d)[0]
    assert len(children) == 3000


def test_errors(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            _listdir.listdir(fd)
        assert e.value.errno == errno.ENOTDIR
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        _listdir.listdir(fd)  # closed
    assert e.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        _listdir.listdir(-1)
    with pytest.raises(TypeError):
        _listdir.listdir("not an fd")  # type: ignore[arg-type]


def test_list_directory_warns_and_descends(odd_dir: Path) -> None:
    """The indexer's wrapper: bad names warned about by their escaped bytes, the loop
    link warned about, subdirectories handed on with their relative paths."""
    warnings: list[str] = []
    subdirs: list[str] = []
    listing = indexer.list_directory(str(odd_dir.parent), "odd", warnings.append, subdirs)
    assert isinstance(listing, list)
    assert sorted(subdirs) == ["odd/sub", "odd/sub.D"]
    assert "skipped a name that is not UTF-8 in odd: b'bad-\\\\udcff\\\\udcfe.txt'" in warnings
    assert any(w.startswith("symlink loop at odd/loop") for w in warnings)
    assert len(warnings) == 3, warnings


names = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(names, st.sampled_from(["file", "dir", "link", "fifo"]),
                          st.integers(0, 3000)), max_size=25, unique_by=lambda t: t[0]))
def test_any_names_agree_with_scandir(tmp_path_factory: pytest.TempPathFactory,
                                      children: list[tuple[bytes, str, int]]) -> None:
    """Any bytes a name may hold, any kind of child: the same as scandir + lstat."""
    d = os.fsencode(tmp_path_factory.mktemp("any"))
    for name, kind, size in children:
        path = os.path.join(d, name)
        if kind == "file":
            with open(path, "wb") as f:
                f.truncate(size)
        elif kind == "dir":
            os.mkdir(path)
        elif kind == "link":
            os.symlink(b"x" * (size % 200 + 1), path)
        else:
            os.mkfifo(path)
    got = listed(Path(os.fsdecode(d)))
    want = reference(Path(os.fsdecode(d)))
    assert got[0] == want[0]
    assert (got[1], got[2], sorted(got[3]), got[4]) == (want[1], want[2], sorted(want[3]), 0)
    assert len(got[0]) + len(got[3]) == len(children)
