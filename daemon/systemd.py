"""The systemd service protocols: sd_notify(3), the watchdog, and socket activation.

Implemented directly (a datagram and a few environment variables; see sd_notify(3)
and sd_listen_fds(3)) rather than through a library: the protocol is small and
stable, and the tests exercise it against real sockets.
Everything here is a no-op when the daemon is not run by systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger("sd.systemd")

LISTEN_FDS_START = 3


class Notifier:
    """Sends ``VAR=value`` lines to ``$NOTIFY_SOCKET``; does nothing when it is unset."""

    def __init__(self, address: str | None) -> None:
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        elif not address.startswith("/"):
            log.warning("ignoring unsupported NOTIFY_SOCKET %r", address)
            return
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A full receive queue must not hold the event loop up for long (the watchdog
        # pings from it); systemd reads its notify socket promptly.
        self._sock.settimeout(1.0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    def notify(self, *lines: str) -> bool:
        """Send one message of ``lines``; True if it was sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            log.debug("sd_notify %s failed: %s", lines, e)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None if it is off."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec) / 1_000_000 / 2


async def watchdog(notifier: Notifier, interval: float) -> None:
    """Ping from the event loop itself: a wedged loop stops the pings and systemd restarts us."""
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def report_status(notifier: Notifier, status: Callable[[], str], every: float,
                        sent: str = "") -> None:
    """Send ``STATUS=`` whenever ``status()`` changes (checked every ``every`` s).

    ``sent`` is the status line systemd already has (e.g. sent with ``READY=1``).
    """
    last = sent
    while True:
        line = status()
        if line != last:
            notifier.notify(f"STATUS={line}")
            last = line
        await asyncio.sleep(every)


def listen_fds(environ: MutableMapping[str, str] = os.environ,
               unset: bool = True) -> list[tuple[str, socket.socket]]:
    """The sockets systemd passed us (``$LISTEN_FDS``), with their ``FileDescriptorName=``.

    Empty unless ``$LISTEN_PID`` is this process. With ``unset``, the variables are
    removed so that child processes do not take the sockets for theirs.
    """
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    names = environ.get("LISTEN_FDNAMES", "")
    if unset:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            environ.pop(var, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    n = int(count)
    labels = names.split(":") if names else []
    result = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        name = labels[i] if i < len(labels) else "unknown"
        try:
            os.set_inheritable(fd, False)
            result.append((name, socket.socket(fileno=fd)))  # family and type read from the fd
        except OSError as e:
            log.warning("ignoring fd %d (%r) passed by systemd: %s", fd, name, e)
    return result


def activated_socket(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The listening Unix stream socket systemd passed us, if any; other passed fds are closed."""
    chosen: socket.socket | None = None
    for name, sock in listen_fds(environ):
        usable = (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
                  and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        if usable and chosen is None:
            chosen = sock
            log.info("serving socket %r passed by systemd (fd %d)", name, sock.fileno())
        else:
            log.warning("closing unexpected socket %r passed by systemd (fd %d)",
                        name, sock.fileno())
            sock.close()
    if chosen is not None:
        chosen.setblocking(False)
    return chosen
