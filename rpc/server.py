"""The Unix socket server: framing, peer credentials, back-pressure, subscriptions.

Protocol layer only: each complete line goes to ``JsonRpc.handle``; answers are
written as they become ready, so one slow request never holds up the others
on its connection (responses are matched by id).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import cast

from daemon import errors
from daemon.calls import CLIENT, Caller
from daemon.events import Subscription
from rpc.dispatch import Dispatcher
from rpc.jsonrpc import JsonRpc, encode_error, encode_notification

log = logging.getLogger("sd.server")

_PEERCRED = struct.Struct("3i")
BACKLOG = 4096  # connections waiting to be accepted (capped by net.core.somaxconn)
MAX_IN_FLIGHT = 1024  # unanswered requests per connection before it is read no further
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # not exported by Python 3.11


def prepare_socket_path(path: Path, gid: int | None = None) -> None:
    """Create the socket's private directory; remove a stale socket; refuse a live one.

    The directory is 0700, or 0750 owned by group ``gid`` when that group may connect.
    """
    parent = path.parent
    mode = 0o700 if gid is None else 0o750
    if not parent.exists():
        parent.mkdir(mode=mode, parents=True)
    st = parent.stat()
    if st.st_uid == os.getuid() and not st.st_mode & stat.S_ISVTX:
        if gid is not None and st.st_gid != gid:
            os.chown(parent, -1, gid)
        os.chmod(parent, mode)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise errors.SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            log.info("replacing stale socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise errors.SocketInUse(f"another sd daemon is already serving {path}")
        finally:
            probe.close()


def bind_socket(path: Path, gid: int | None = None) -> socket.socket:
    """Bind and listen: mode 0600, or 0660 owned by group ``gid``."""
    prepare_socket_path(path, gid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, 0o600 if gid is None else 0o660)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups as of connect() (SO_PEERGROUPS, Linux 4.13+).

    Taken from the socket, not from /proc/<pid>: no pid-reuse race, and it works
    under ``ProtectProc=invisible``.
    """
    for size in (64, 65536):  # NGROUPS_MAX is 65536
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size * 4)
        except OSError as e:
            if e.errno == errno.ERANGE:
                continue
            return ()
        return struct.unpack(f"{len(raw) // 4}I", raw)
    return ()


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self._answer = server.rpc.handle
        self.transport: asyncio.Transport | None = None
        self.caller: Caller | None = None
        self._buf = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._subscription: Subscription | None = None
        self._closed = False
        self._read_paused_for_tasks = False
        self._eof = False  # the client shut down its sending side

    # --- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except OSError:
            pid, uid, gid = 0, -1, -1
        if not self.server.peer_allowed(uid, gid, lambda: peer_groups(sock)):
            log.warning("refused connection from pid %d uid %d gid %d", pid, uid, gid)
            transport.write(encode_error(None, errors.PermissionDenied(
                f"uid {uid} may not use this daemon")) + b"\n")
            transport.close()
            self._closed = True
            return
        self.caller = Caller(CLIENT, uid=uid, session=self, memo={})
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._buf and data.find(b"\n") == len(data) - 1:
            # The common case: exactly one whole request line; no buffering needed.
            if not data.isspace():
                self._handle(data)
            return
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            if line.strip():
                self._handle(line)
            if self._closed:
                return
        if start:
            del buf[:start]
        if len(buf) > self.server.max_line:
            log.warning("client uid %s sent a line over %d bytes; closing it",
                        self.caller.uid if self.caller else "?", self.server.max_line)
            self._write(encode_error(None, errors.TooLarge(
                f"request line exceeds {self.server.max_line} bytes")))
            buf.clear()
            self.close()

    def eof_received(self) -> bool:
        """The client half-closed: answer what was read, then close (True keeps it open)."""
        self._eof = True
        if self._buf.strip() and not self._closed:
            line = bytes(self._buf)  # a last request without its newline
            self._buf.clear()
            self._handle(line)
        if self._closed:
            return False
        self._close_if_done()
        return True

    def _close_if_done(self) -> None:
        # A subscriber keeps reading events after it stops writing: it stays open. Without
        # one, ``_tasks`` holds only requests read but not yet answered.
        if self._eof and self._subscription is None and not self._tasks:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        self._can_write.set()
        if self._subscription is not None:
            self._subscription.close()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading its requests until it catches up.
        self._can_write.clear()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._can_write.set()
        if (self.transport is not None and not self._closed and not self._read_paused_for_tasks
                and not self.server.stopping):
            self.transport.resume_reading()

    # --- requests ---------------------------------------------------------------------------
    def _handle(self, line: bytes) -> None:
        assert self.caller is not None
        try:
            answer = self._answer(line, self.caller)
        except Exception as e:
            log.exception("unexpected error handling a request")
            answer = encode_error(None, errors.InternalError(f"internal error: {e}"))
        if answer is None:
            return
        if isinstance(answer, bytes):
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(answer + b"\n")
            return
        task = asyncio.ensure_future(self._answer_later(answer))
        self._tasks.add(task)
        self.server.in_flight.add(task)
        task.add_done_callback(self._request_done)
        if len(self._tasks) >= MAX_IN_FLIGHT and self.transport is not None:
            # Pipelining without bound would only pile up tasks: read on when some finish.
            self._read_paused_for_tasks = True
            self.transport.pause_reading()

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.server.in_flight.discard(task)
        if self._eof and not self._closed:
            self._close_if_done()
            return
        if (self._read_paused_for_tasks and len(self._tasks) < MAX_IN_FLIGHT // 2
                and self.transport is not None and not self._closed
                and self._can_write.is_set() and not self.server.stopping):
            self._read_paused_for_tasks = False
            self.transport.resume_reading()

    async def _answer_later(self, answer: Awaitable[bytes | None]) -> None:
        out = await answer
        if out is not None:
            self._write(out)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data + b"\n")

    # --- subscriptions -----------------------------------------------------------------------
    def attach_subscription(self, sub: Subscription) -> None:
        if self._subscription is not None:
            self._subscription.close()
        self._subscription = sub
        task = asyncio.ensure_future(self._pump(sub))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, sub: Subscription) -> None:
        while True:
            event = await sub.get()
            if event is None:
                break
            await self._can_write.wait()
            if self._closed:
                break
            self._write(encode_notification("event", event))
        if sub.dropped_total and not self._closed:
            log.warning("disconnecting a subscriber that fell %d events behind", sub.dropped_total)
            self.close()

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()


class RpcServer:
    """Serves JSON-RPC on a Unix socket it binds, or on one it was handed (socket activation)."""

    def __init__(self, dispatcher: Dispatcher, socket_path: Path, *, max_line: int,
                 allowed_gid: int | None = None) -> None:
        self.rpc = JsonRpc(dispatcher)
        self.socket_path = socket_path
        self.max_line = max_line
        self.allowed_gid = allowed_gid
        self.connections: set[Connection] = set()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._owns_path = False

    def peer_allowed(self, uid: int, gid: int,
                     groups: Callable[[], Iterable[int]] = tuple) -> bool:
        """Root, our own uid, or a member of ``allowed_gid`` (primary or supplementary)."""
        if uid in (0, os.getuid()):
            return True
        if self.allowed_gid is None:
            return False
        return gid == self.allowed_gid or self.allowed_gid in groups()

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = bind_socket(self.socket_path, self.allowed_gid)
            self._owns_path = True
        # uvloop listens again with `backlog`; keep it as deep as bind_socket's.
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock,
                                                     backlog=BACKLOG)
        log.info("listening on %s", self.socket_path)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish, close connections, remove the socket."""
        # 1. No new connections, and no new requests on the open ones.
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.pause_reading()
        # 2. Requests already being served get up to `grace` seconds to answer.
        if self.in_flight:
            await asyncio.wait(list(self.in_flight), timeout=grace)
        # 3. Close every connection (subscriptions end with them).
        for conn in list(self.connections):
            conn.close()
        # 4. The socket file goes away with the daemon.
        if self._owns_path:
            self.socket_path.unlink(missing_ok=True)
        if self._server is not None:
            await self._server.wait_closed()

