"""Filesystem helpers: classifying directory entries and opening files inside a location.

Files are opened component by component from the location root with
``O_NOFOLLOW``, so no symlink (not even one swapped in after indexing) can lead
a read outside the location.
"""

from __future__ import annotations

import errno
import os
import stat

from daemon import errors

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO swapped in for a file must not wait for a writer.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def extension_of(name: str) -> str:
    """Lower-case suffix without the dot; '' for none and for dot-files like ``.bashrc``."""
    dot = name.rfind(".")
    return name[dot + 1:].lower() if dot > 0 else ""


def join(parent: str, name: str) -> str:
    """Relative paths use '/' and no leading slash; '' is the location root."""
    return f"{parent}/{name}" if parent else name


def parent_of(path: str) -> str:
    slash = path.rfind("/")
    return path[:slash] if slash >= 0 else ""


def _components(rel: str) -> list[str]:
    parts = rel.split("/")
    if not rel or "" in parts or "." in parts or ".." in parts:
        raise errors.InvalidParams(f"bad relative path {rel!r}")
    return parts


def _split(rel: str) -> tuple[str, str]:
    """(parent, name) of a relative path, checked as ``_components`` does (a component
    is empty, '.' or '..' exactly where the padded path holds '//', '/./' or '/../')."""
    padded = f"/{rel}/"
    if not rel or "//" in padded or "/./" in padded or "/../" in padded:
        raise errors.InvalidParams(f"bad relative path {rel!r}")
    parent, _, name = rel.rpartition("/")
    return parent, name


def open_dir_nofollow(root: str, rel: str) -> int:
    """An fd on directory ``root/rel``, refusing a symlink at any level below ``root``."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in _components(rel) if rel else []:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:
                # O_NOFOLLOW | O_DIRECTORY on a symlink says ENOTDIR; report it as the link it is.
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root: str, rel: str) -> int:
    """An fd on the regular file ``root/rel`` for reading. Raises SdErrors, never OSError."""
    parts = _components(rel)
    try:
        dfd = open_dir_nofollow(root, "/".join(parts[:-1]))
        try:
            return _open_regular(dfd, parts[-1], rel)[0]
        finally:
            os.close(dfd)
    except OSError as e:  # the directory's, or the file's fstat
        raise _os_error(e, rel) from None


def _open_regular(dfd: int, name: str, rel: str) -> tuple[int, os.stat_result]:
    """An fd on the regular file ``name`` in directory ``dfd``, and its status; the fd is
    closed on every failure. SdErrors, but the OSError of a failed fstat as it is."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dfd)
    except OSError as e:
        raise _os_error(e, rel) from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise errors.InvalidState(f"{rel} is not a regular file (it is a {kind_of(st.st_mode)})")
    return fd, st


def _os_error(e: OSError, rel: str) -> errors.SdError:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return errors.NotFound(f"{rel} no longer exists on disk; rescan the location",
                               {"path": rel})
    if e.errno == errno.ELOOP:
        return errors.InvalidState(f"{rel} is (or passes through) a symbolic link; not followed",
                                   {"path": rel})
    return errors.InvalidState(f"cannot open {rel}: {e.strerror}", {"path": rel})


def read_range(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at end of file)."""
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


class OpenFiles:
    """Files a guest instance read with ``entry_read``, kept open for its next reads.

    Opened like any read (component by component, no symlink followed), so what an
    fd reads is the file that was inside the location when it was opened, whatever is
    renamed or swapped in at its path later. At most ``MAX`` at once (the oldest is
    closed first); ``close`` when the instance is done.
    """

    MAX = 16

    def __init__(self) -> None:
        self._files: dict[tuple[str, int], tuple[int, str]] = {}

    def get(self, key: tuple[str, int]) -> tuple[int, str] | None:
        return self._files.get(key)

    def put(self, key: tuple[str, int], fd: int, rel: str) -> None:
        if len(self._files) >= self.MAX:
            oldest = next(iter(self._files))
            os.close(self._files.pop(oldest)[0])
        self._files[key] = (fd, rel)

    def close(self) -> None:
        files, self._files = self._files, {}
        for fd, _ in files.values():
            os.close(fd)

    def __len__(self) -> int:
        return len(self._files)


class Dirs:
    """Directory fds of one location, each opened once (like ``open_dir_nofollow``), for
    stat-ing and opening many files in few system calls. With ``keep``, at most that many
    stay open, the oldest closed first (files taken a directory at a time need one).
    ``close`` when done."""

    def __init__(self, root: str, keep: int = 0) -> None:
        self.root = root
        self.keep = keep
        self._fds: dict[str, int] = {}

    def _dir(self, parent: str) -> int:
        fd = self._fds.get(parent)
        if fd is None:
            if self.keep and len(self._fds) >= self.keep:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[parent] = open_dir_nofollow(self.root, parent)
        return fd

    def lstat(self, rel: str) -> os.stat_result:
        """The file's own status (never a symlink's target). Raises SdErrors."""
        parent, name = _split(rel)
        try:
            return os.stat(name, dir_fd=self._dir(parent), follow_symlinks=False)
        except OSError as e:
            raise _os_error(e, rel) from None

    def open_file(self, rel: str) -> tuple[int, os.stat_result]:
        """Like ``open_file``: an fd on the regular file ``rel``, and its status. Raises
        SdErrors, but the OSError of a failed fstat as it is."""
        parent, name = _split(rel)
        try:
            dfd = self._dir(parent)
        except OSError as e:
            raise _os_error(e, rel) from None
        return _open_regular(dfd, name, rel)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
