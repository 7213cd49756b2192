"""Row 4: JSON-RPC dispatch cost per call, in-process, against jsonrpcserver.

Ours: ``JsonRpc.handle(line, caller)`` (parse, validate, dispatch through
``Dispatcher``, encode) with a client caller made as the socket server makes one
(with its per-connection memo), exactly what the socket server calls per line. Baseline: jsonrpcserver's default ``async_dispatch`` on the same
line with an equivalent ``ping`` method. Both are awaited per call when they
return an awaitable; both answers are checked.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import PING, PING_PAYLOAD, median
from bench.inproc import bench_core
from bench.report import Row, unavailable

WHAT = "JSON-RPC dispatch cost per call"
TARGET = "<= 20 µs"
LINE = (b'{"jsonrpc":"2.0","id":1,"method":"' + PING.encode()
        + b'","params":{"library_id":null,"payload":' + PING_PAYLOAD.rstrip() + b"}}")


async def _per_call_us(call: Callable[[], Any], n: int, check: Callable[[Any], bool]) -> float:
    first = call()
    if inspect.isawaitable(first):
        first = await first
    if not check(first):
        raise RuntimeError(f"unexpected answer {first!r}")
    t0 = time.perf_counter()
    for _ in range(n):
        r = call()
        if inspect.isawaitable(r):
            await r
    return (time.perf_counter() - t0) / n * 1e6


def _jsonrpcserver() -> Callable[[], Awaitable[str]]:
    from jsonrpcserver import Result, Success, async_dispatch, method

    @method(name=PING)
    async def ping(library_id: str | None = None, payload: Any = None) -> Result:
        return Success({"echo": payload})

    text = LINE.decode()
    return lambda: async_dispatch(text)


async def run(tmp: Path, *, rounds: int, calls: int) -> Row:
    from daemon.calls import CLIENT, Caller
    from rpc.dispatch import Dispatcher
    from rpc.jsonrpc import JsonRpc

    try:
        theirs = _jsonrpcserver()
    except ImportError as e:
        return unavailable("dispatch_cost", WHAT, "µs/call", TARGET,
                           f"jsonrpcserver is not installed ({e}); install the bench extra")
    core = await bench_core(tmp / "dispatch-data")
    try:
        rpc = JsonRpc(Dispatcher(core))
        caller = Caller(CLIENT, uid=0, memo={})  # as the socket server makes one

        def ours() -> Any:
            return rpc.handle(LINE, caller)

        ours_us, base_us = [], []
        for _ in range(rounds):
            ours_us.append(await _per_call_us(ours, calls, lambda r: b'"echo"' in r))
            base_us.append(await _per_call_us(theirs, max(1, calls // 10),
                                              lambda r: '"echo"' in r))
    finally:
        await core.shutdown()
    value, base = median(ours_us), median(base_us)
    return Row("dispatch_cost", WHAT, "µs/call", value, "jsonrpcserver async_dispatch", base,
               median([b / o for o, b in zip(ours_us, base_us, strict=False)]), TARGET, value <= 20.0,
               note="ratio = how many times cheaper than jsonrpcserver",
               extra={"rounds": {"ours_us": ours_us, "baseline_us": base_us}})
