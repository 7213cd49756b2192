"""Row 1: ``spacedrive_call`` of ping from inside a guest, against Extism and a bare host function.

All are guest loops calling the host n times:
(i) ours, as extensions run: a real ``wasm_job`` dispatched through the job system
    (its own instance, on its job thread) whose export calls ``spacedrive_call``
    ping n times (real host functions, policy, dispatcher); timed from dispatch
    to its completed row. The same loop through the extension's long-lived main
    instance is reported in the note;
(ii) the peer: an Extism python-sdk host function taking and returning JSON
    (``Annotated[dict, extism.Json]``), called from an equivalent Extism guest loop;
(iii) the limit: a ``fastpath.define_unchecked`` host function that only reads
    the payload from guest memory (through a memoryview of it made once, no checks
    beyond the bounds).
Rounds are interleaved and the median of each is reported (shared, noisy machine).
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

from bench import wat
from bench.common import median
from bench.inproc import BENCH_RATE_PER_MINUTE, bench_core
from bench.report import Row, unavailable
from daemon.extensions.fastpath import HostCall, RawFunc, define_unchecked

EXT_ID = "bench-ping-loop"
JOB_EXT_ID = "bench-ping-job"
WHAT = "ping via spacedrive_call from a guest wasm_job"
TARGET = ">= 1.5x Extism"
JOB_TIMEOUT_S = 120.0


def _timed(fn: Callable[[int], int], n: int) -> float:
    """Calls per second of ``fn(n)``; the guest's count of bad replies must be 0."""
    t0 = time.perf_counter()
    bad = fn(n)
    dt = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{bad} of {n} guest calls got a bad reply")
    return n / dt


def _cpu_timed(fn: Callable[[int], int], n: int) -> float:
    """Calls per second of the calling thread's CPU time (not disturbed by other processes)."""
    t0 = time.thread_time()
    bad = fn(n)
    dt = time.thread_time() - t0
    if bad:
        raise RuntimeError(f"{bad} of {n} guest calls got a bad reply")
    return n / dt


def bare_loops(engine: wasmtime.Engine) -> tuple[Callable[[int], int], Callable[[int], int]]:
    """The limit: (read through a view of the memory made once, read through ``HostCall.read``)."""
    module = wasmtime.Module(engine, wat.compile_wat(wat.bare_read_loop()))
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32, i32], [i32])

    # One instance per store, as the daemon's: let fastpath cache the memory export
    # if this wasmtime fastpath can (newer daemon versions).
    opts = ({"single_instance": True}
            if "single_instance" in inspect.signature(define_unchecked).parameters else {})

    def instantiate(fn: Callable[[HostCall, tuple[Any, ...]], int],
                    on_memory: Callable[[wasmtime.Store, wasmtime.Memory], None]
                    ) -> Callable[[int], int]:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1 << 40)
        inst = wasmtime.Instance(store, module, [define_unchecked(store, ty, fn, **opts)])
        mem = inst.exports(store)["memory"]
        assert isinstance(mem, wasmtime.Memory)
        on_memory(store, mem)
        func = inst.exports(store)["run"]
        assert isinstance(func, wasmtime.Func)
        raw = RawFunc(store, func)
        return lambda n: int(raw(n) or 0)

    view: list[memoryview] = []

    def remember(store: wasmtime.Store, mem: wasmtime.Memory) -> None:
        base = ctypes.addressof(mem.data_ptr(store).contents)
        view.append(memoryview((ctypes.c_char * mem.data_len(store)).from_address(base)).cast("B"))

    def read_cached(hc: HostCall, a: tuple[Any, ...]) -> int:
        ptr, n = a
        mv = view[0]
        if ptr < 0 or n < 0 or ptr + n > len(mv):
            return 1
        mv[ptr:ptr + n].tobytes()
        return 0

    def read_hostcall(hc: HostCall, a: tuple[Any, ...]) -> int:
        hc.read(a[0], a[1])
        return 0

    return (instantiate(read_cached, remember),
            instantiate(read_hostcall, lambda s, m: None))


async def run(tmp: Path, *, rounds: int, calls: int) -> Row:
    try:
        from bench import extism_peer
        peer = extism_peer.loop()
    except ImportError as e:
        return unavailable("guest_call", WHAT, "calls/s", TARGET,
                           f"extism is not installed ({e}); install the bench extra")
    core = await bench_core(tmp / "guest-data")
    try:
        pm = core.plugin_manager
        assert pm is not None
        src = wat.make_extension(tmp / "guest-src", EXT_ID,
                                 wat.compile_wat(wat.spacedrive_call_loop()),
                                 rate_per_minute=BENCH_RATE_PER_MINUTE)
        await pm.install(src)
        plugin = pm._plugins[EXT_ID]
        await pm.install(wat.make_extension(tmp / "guest-src", JOB_EXT_ID,
                                            wat.compile_wat(wat.spacedrive_call_job()),
                                            rate_per_minute=BENCH_RATE_PER_MINUTE))
        lib = await core.libraries.create_library("bench-guest")
        export = pm.job_export(JOB_EXT_ID, "ping_loop")

        async def job_rate(n: int) -> float:
            """Calls per second of one ping-loop job, dispatch to completed row."""
            t0 = time.perf_counter()
            job_id = await lib.jobs.dispatch_by_name(
                "wasm_job", {"extension_id": JOB_EXT_ID, "export_fn": export,
                             "state_json": str(n)})
            await asyncio.wait_for((await lib.jobs.get_handle(job_id)).wait(), JOB_TIMEOUT_S)
            return n / (time.perf_counter() - t0)

        def main_blocking(n: int) -> int:
            with plugin.main_lock:
                assert plugin.main is not None
                return plugin.main.call("bench_loop", n)

        env = plugin.main.env if plugin.main is not None else None

        def ours_unaccounted(n: int) -> int:
            """The same loop with per-extension accounting off: what accounting costs."""
            if env is None or not hasattr(env, "account"):
                return main_blocking(n)
            env.account = False
            try:
                return main_blocking(n)
            finally:
                env.account = True

        bare, bare_hostcall = bare_loops(pm.runtime.engine)
        ours_r, main_r, peer_r, bare_r, bare_hc_r, off_r = [], [], [], [], [], []
        for f in (main_blocking, ours_unaccounted, peer, bare, bare_hostcall):  # warm-up
            _timed(f, 2000)
        await job_rate(2000)
        for _ in range(rounds):
            ours_r.append(await job_rate(calls))
            # Guest calls run off the event loop, as in the daemon.
            main_r.append(await asyncio.to_thread(_timed, main_blocking, calls))
            peer_r.append(_timed(peer, calls))
            bare_r.append(_timed(bare, calls * 4))
            bare_hc_r.append(_timed(bare_hostcall, calls * 4))
        # Accounting's cost: the same loop with it on and off, in pairs whose order
        # alternates, timed in the thread's CPU time (what other processes on this
        # shared machine do moves wall time far more than 3%).
        on_r: list[float] = []
        for i in range(rounds * 4):
            pair = [(on_r, main_blocking), (off_r, ours_unaccounted)]
            for results, fn in (pair if i % 2 == 0 else pair[::-1]):
                results.append(await asyncio.to_thread(_cpu_timed, fn, calls // 2))
    finally:
        await core.shutdown()
    ours_v, peer_v, bare_v = median(ours_r), median(peer_r), median(bare_r)
    ratio = median([o / p for o, p in zip(ours_r, peer_r, strict=False)])
    main_ratio = median([o / p for o, p in zip(main_r, peer_r, strict=False)])
    pct_limit = 100.0 * ours_v / bare_v
    # Accounting's cost: paired rounds, each one's slowdown against its neighbour.
    acct_pct = median([100.0 * (1.0 - o / u) for o, u in zip(on_r, off_r, strict=False)])
    return Row(
        "guest_call", WHAT, "calls/s", ours_v, "Extism JSON host fn", peer_v, ratio, TARGET,
        ratio >= 1.5,
        note=(f"limit (bare unchecked host fn reading guest memory): {bare_v:,.0f} calls/s, "
              f"the job = {pct_limit:.1f}% of it; the same loop in the extension's main "
              f"instance (no job): {median(main_r):,.0f} calls/s ({main_ratio:.2f}x Extism); "
              f"the same bare fn reading through "
              f"HostCall.read: {median(bare_hc_r):,.0f} calls/s; medians of {rounds} "
              f"interleaved rounds of {calls:,} calls; per-extension accounting costs "
              f"{acct_pct:.1f}% (median of {len(on_r)} pairs timed in thread CPU time: "
              f"{median(on_r):,.0f} vs {median(off_r):,.0f} calls per CPU-second)"),
        extra={"peer_calls_per_s": peer_v, "limit_calls_per_s": bare_v,
               "pct_of_limit": pct_limit, "limit_hostcall_read_calls_per_s": median(bare_hc_r),
               "accounting_overhead_pct": acct_pct,
               "accounting_cpu_rates": {"on": on_r, "off": off_r},
               "main_instance_calls_per_s": median(main_r), "main_instance_ratio": main_ratio,
               "rounds": {"ours": ours_r, "main_instance": main_r, "peer": peer_r,
                          "limit": bare_r,
                          "limit_hostcall_read": bare_hc_r}})
