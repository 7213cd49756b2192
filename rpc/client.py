"""Clients of the daemon's socket: ``Client`` (async) and ``SyncClient`` (for scripts).

    async with await Client.connect(path) as c:
        status = await c.call("query:core.status.v1")
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from daemon.config import default_data_dir, default_socket_path
from daemon.errors import ConnectError, SdError

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def default_socket() -> Path:
    return default_socket_path(default_data_dir())


class Client:
    """One connection; requests may overlap and are matched to answers by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 path: Path) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._reader_task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, path: Path | str | None = None) -> Client:
        path = Path(path) if path is not None else default_socket()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=64 << 20)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ConnectError(
                f"cannot connect to the sd daemon at {path} ({e.strerror}); "
                f"start one with `sd-daemon` (or `make run`)", {"socket": str(path)}) from None
        except PermissionError:
            raise ConnectError(f"permission denied on {path}: the daemon serves only its own "
                               f"user (uid {os.getuid()} here)", {"socket": str(path)}) from None
        return cls(reader, writer, path)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, payload: Any = None, library_id: str | None = None) -> Any:
        """Run one operation; raises the SdError subclass the daemon answered with."""
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        msg = {"jsonrpc": "2.0", "id": rid, "method": method,
               "params": {"library_id": library_id, "payload": payload if payload is not None else {}}}
        self._writer.write(_enc.encode(msg) + b"\n")
        await self._writer.drain()
        return await fut

    async def subscribe(self, kinds: list[str] | None = None,
                        library_id: str | None = None) -> Any:
        """Turn this connection into an event stream (requests still work on it)."""
        return await self.call("action:events.subscribe.input.v1",
                               {"kinds": kinds, "library_id": library_id})

    async def next_event(self) -> dict[str, Any] | None:
        """The next event after ``subscribe``; None once the connection is closed."""
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)
        return item  # type: ignore[no-any-return]

    async def events(self, kinds: list[str] | None = None,
                     library_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Subscribe, then yield every event until the connection closes."""
        await self.subscribe(kinds, library_id)
        while (item := await self.next_event()) is not None:
            yield item

    async def _read_loop(self) -> None:
        error: BaseException = ConnectError(f"the daemon at {self.path} closed the connection")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = _dec.decode(line)
                if isinstance(msg, dict) and msg.get("method") == "event":
                    self._events.put_nowait(msg.get("params"))
                    continue
                if isinstance(msg, dict):
                    fut = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
                    if fut is None:
                        if "error" in msg:  # an error not tied to a request (e.g. line too long)
                            error = SdError.from_dict(msg["error"])
                        continue
                    if fut.done():
                        continue
                    if "error" in msg:
                        fut.set_exception(SdError.from_dict(msg["error"]))
                    else:
                        fut.set_result(msg.get("result"))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            error = ConnectError(f"connection to {self.path} lost: {e}")
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()
            self._events.put_nowait(None)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, BrokenPipeError):
            pass
        self._reader_task.cancel()


class SyncClient:
    """A blocking wrapper for scripts: ``SyncClient(path).call(method, payload)``."""

    def __init__(self, path: Path | str | None = None) -> None:
        self._runner = asyncio.Runner()
        self._client = self._runner.run(Client.connect(path))

    def call(self, method: str, payload: Any = None, library_id: str | None = None) -> Any:
        return self._runner.run(self._client.call(method, payload, library_id))

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
