"""Row 6: loading a ~500 KB extension from the compiled-module cache, against compiling it cold.

Through the real ``PluginManager.load_plugin`` (read, compile or deserialize,
ABI check, instantiate, ``plugin_init``, bookkeeping), timed around the await.
Cold: the cache entry is deleted first. Cached: a load after an unload, with
the entry present.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import wat
from bench.common import median
from bench.inproc import BENCH_RATE_PER_MINUTE, bench_core
from bench.report import Row

EXT_ID = "bench-big"
TARGET_MS = 10.0


async def run(tmp: Path, *, cold_rounds: int, cached_rounds: int,
              size: int = 500_000) -> Row:
    wasm = wat.big_wasm(size)
    core = await bench_core(tmp / "load-data")
    try:
        pm = core.plugin_manager
        assert pm is not None
        await pm.install(wat.make_extension(tmp / "load-src", EXT_ID, wasm,
                                            rate_per_minute=BENCH_RATE_PER_MINUTE), load=False)

        async def load() -> tuple[float, float, bool]:
            t0 = time.perf_counter()
            await pm.load_plugin(EXT_ID)
            wall = (time.perf_counter() - t0) * 1000
            info = pm.info(EXT_ID)
            await pm.unload_plugin(EXT_ID)
            return wall, info.load_ms or 0.0, bool(info.from_cache)

        cold, cached, cached_inner = [], [], []
        for _ in range(cold_rounds):
            for entry in pm.runtime.cache_dir.glob("*.cwasm"):
                entry.unlink()
            wall, _, from_cache = await load()
            assert not from_cache
            cold.append(wall)
        await load()  # the first load after the last cold one is already cached; warm the OS cache
        for _ in range(cached_rounds):
            wall, inner, from_cache = await load()
            assert from_cache
            cached.append(wall)
            cached_inner.append(inner)
        entry_kb = sum(e.stat().st_size for e in pm.runtime.cache_dir.glob("*.cwasm")) / 1024
    finally:
        await core.shutdown()
    value, base = median(cached), median(cold)
    return Row("module_load_cached", f"load a {len(wasm) / 1000:.0f} KB extension from the cache",
               "ms", value, "compiling it cold", base, base / value, f"<= {TARGET_MS:.0f} ms",
               value <= TARGET_MS,
               note=(f"wall time of PluginManager.load_plugin; its own load_ms (the blocking "
                     f"part) {median(cached_inner):.2f} ms; cache entry {entry_kb:,.0f} KB; "
                     f"medians of {cached_rounds} cached and {cold_rounds} cold loads; "
                     f"ratio = how many times faster than cold"),
               extra={"wasm_bytes": len(wasm), "cache_entry_kb": entry_kb,
                      "cached_load_ms_inner": median(cached_inner),
                      "rounds": {"cached_ms": cached, "cold_ms": cold,
                                 "cached_inner_ms": cached_inner}})
