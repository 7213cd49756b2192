"""The socket baseline: a bare asyncio newline-delimited JSON echo server.

``python -m bench.echo_server SOCKET``. Same event loop (uvloop) and JSON
library (msgspec) as the daemon, and the same answer to a ping
(``{"jsonrpc":"2.0","id":..,"result":{"echo":<payload>}}``), but no protocol
checks, no dispatch, no permissions: what is left is the cost of the socket,
the loop and the JSON. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import msgspec
import uvloop

_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        *lines, self.buf = buf.split(b"\n")
        out = []
        for line in lines:
            msg: Any = _dec.decode(line)
            out.append(_enc.encode({"jsonrpc": "2.0", "id": msg.get("id"),
                                    "result": {"echo": msg["params"]["payload"]}}))
        if out and self.transport is not None:
            self.transport.write(b"\n".join(out) + b"\n")


async def serve(path: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if os.path.exists(path):
        os.unlink(path)
    server = await loop.create_unix_server(Echo, path)
    await stop.wait()
    server.close()
    os.unlink(path)


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
