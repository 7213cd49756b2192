"""One guest instance: a Store with its limits, the ABI imports, and calls into exports.

Each job run gets an instance of its own, so jobs of one extension run
concurrently and a trap in one cannot poison another. An instance is used by
one thread at a time.
"""

from __future__ import annotations

import wasmtime

from daemon.config import ExtensionLimits
from daemon.errors import ExtensionError
from daemon.extensions.fastpath import RawFunc, RawInstance, set_epoch_deadline
from daemon.extensions.host_functions import HostEnv, build_imports


def describe_trap(e: BaseException, time_slice_ms: int) -> str:
    """A one-line reason for a failed guest call."""
    if isinstance(e, wasmtime.Trap) and e.trap_code == wasmtime.TrapCode.INTERRUPT:
        return (f"time limit: guest code ran for more than {time_slice_ms} ms "
                f"without returning to the host")
    text = str(e).strip()
    # wasmtime's text is "error while executing at wasm backtrace: <frames> Caused by: <why>";
    # the why is what a user needs (the host's refusal, or "wasm trap: ...").
    if "Caused by:" in text:
        cause = " ".join(ln.strip() for ln in text.split("Caused by:", 1)[1].splitlines()
                         if ln.strip())
        if cause:
            return cause
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class GuestInstance:
    """An instance of `module` in a Store of its own, with the ABI v1 host functions."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, env: HostEnv,
                 memory_bytes: int, limits: ExtensionLimits) -> None:
        self.env = env
        self.limits = limits
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=memory_bytes, table_elements=100_000,
                              instances=limits.max_instances, tables=limits.max_tables,
                              memories=1)
        set_epoch_deadline(self.store, env.deadline_ticks)
        imports = build_imports(self.store, module, env)
        try:
            self._instance = RawInstance(self.store, module, imports)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise ExtensionError(f"cannot instantiate extension {env.extension_id}: "
                                 f"{describe_trap(e, limits.time_slice_ms)}") from None
        self.memory = self._instance.memory("memory")
        self.alloc = self._instance.func("wasm_alloc")
        self.free = self._instance.func("wasm_free")
        self._funcs = {"wasm_alloc": self.alloc, "wasm_free": self.free}
        # The host functions hold env for as long as the Store holds them; a
        # Store-owning RawFunc in env would keep the Store alive forever.
        env.alloc = self.alloc.detached()

    def _func(self, name: str) -> RawFunc:
        func = self._funcs.get(name)
        if func is None:
            func = self._funcs[name] = self._instance.func(name)
        return func

    def call(self, name: str, *args: int) -> int:
        """Call an i32-returning export; a trap becomes an ExtensionError with its reason."""
        func = self._func(name)
        set_epoch_deadline(self.store, self.env.deadline_ticks)
        try:
            result = func(*args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise ExtensionError(describe_trap(e, self.limits.time_slice_ms)) from None
        return int(result or 0)

    def put(self, data: bytes, what: str = "buffer") -> tuple[int, int]:
        """Copy ``data`` (the job's ``what``) into memory the guest allocated; returns
        (ptr, allocated size)."""
        size = max(len(data), 1)
        set_epoch_deadline(self.store, self.env.deadline_ticks)
        try:
            ptr = self.alloc(size)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise ExtensionError(f"wasm_alloc({size}) failed: "
                                 f"{describe_trap(e, self.limits.time_slice_ms)}") from None
        if not isinstance(ptr, int) or ptr == 0:
            raise ExtensionError(f"wasm_alloc({size}) returned 0: the guest is out of memory")
        if ptr < 0 or ptr + size > self.memory.size():
            raise ExtensionError(
                f"the guest's wasm_alloc({size}) returned {ptr} for the job's {what}, but "
                f"[{ptr}, {ptr + size}) is outside its memory of {self.memory.size()} bytes")
        self.memory.write(ptr, data)
        return ptr, size

    def release(self, ptr: int, size: int) -> None:
        try:
            self.free(ptr, size)
        except (wasmtime.Trap, wasmtime.WasmtimeError):
            pass  # the guest's allocator is its own business once the job is done

    def run_job(self, export: str, ctx_json: bytes, state_json: bytes) -> int:
        cptr, clen = self.put(ctx_json, "context")
        sptr, slen = self.put(state_json, "state")
        code = self.call(export, cptr, len(ctx_json), sptr, len(state_json))
        self.release(cptr, clen)
        self.release(sptr, slen)
        return code
