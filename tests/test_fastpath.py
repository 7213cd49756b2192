"""Tests for daemon.extensions.fastpath against a real wasmtime (guests written in WAT)."""

from __future__ import annotations

import ctypes
import gc
import importlib.metadata
import importlib.util
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime as wt

from daemon.extensions import fastpath as fp
from daemon.extensions.fastpath import GuestCallError, GuestTrap, HostCall, RawFunc

I32 = wt.ValType.i32()
I64 = wt.ValType.i64()
F32 = wt.ValType.f32()
F64 = wt.ValType.f64()

HOST_TYPE = wt.FuncType([I32, I32], [I32])
GREETING = b"hello, guest"
GREETING_PTR = 16

# One host import `env.host : (i32, i32) -> i32`; each test decides what it does.
MAIN_WAT = r"""
(module
  (import "env" "host" (func $host (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "hello, guest")

  ;; Calls host(ptr, len) n times and sums the results.
  (func (export "run") (param $ptr i32) (param $len i32) (param $n i32) (result i32)
    (local $acc i32)
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $acc
          (i32.add (local.get $acc) (call $host (local.get $ptr) (local.get $len))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $again)))
    (local.get $acc))

  (func (export "call_host") (param i32 i32) (result i32)
    (call $host (local.get 0) (local.get 1)))

  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))

  (func (export "boom") (result i32) unreachable)

  (func (export "spin") (loop $forever (br $forever)))

  ;; Bump allocator that grows memory when the heap runs past its end.
  (func $alloc (export "wasm_alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.div_u
                  (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                  (i32.const 65536)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func $sum (export "sum") (param $ptr i32) (param $len i32) (result i32)
    (local $acc i32) (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (local.set $acc (i32.add (local.get $acc) (i32.load8_u (local.get $ptr))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $again)))
    (local.get $acc))

  ;; host(n, 0) must return a pointer to n bytes it wrote; sums them.
  (func (export "fetch_and_sum") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (call $host (local.get $n) (i32.const 0)))
    (call $sum (local.get $p) (local.get $n)))
)
"""


def wasm(wat: str) -> bytes:
    return bytes(wt.wat2wasm(wat))


HostImpl = Callable[[HostCall, tuple[int | float, ...]], int | float | None]


class Guest:
    """MAIN_WAT instantiated in its own Store with `impl` as its host import."""

    def __init__(self, impl: HostImpl, engine: wt.Engine | None = None,
                 single_instance: bool = False) -> None:
        self.engine = engine or wt.Engine()
        self.store = wt.Store(self.engine)
        module = wt.Module(self.engine, wasm(MAIN_WAT))
        host = fp.define_unchecked(self.store, HOST_TYPE, impl, single_instance=single_instance)
        self.instance = wt.Instance(self.store, module, [host])

    def func(self, name: str) -> wt.Func:
        export = self.instance.exports(self.store)[name]
        assert isinstance(export, wt.Func)
        return export

    def raw(self, name: str) -> RawFunc:
        return RawFunc(self.store, self.func(name))

    def call(self, name: str, *args: Any) -> Any:
        """Through the high-level API, for comparison."""
        return self.func(name)(self.store, *args)

    @property
    def memory(self) -> wt.Memory:
        export = self.instance.exports(self.store)["memory"]
        assert isinstance(export, wt.Memory)
        return export


def strlen(call: HostCall, args: tuple[int | float, ...]) -> int:
    ptr, length = args
    assert isinstance(ptr, int) and isinstance(length, int)
    return len(call.read(ptr, length))


TrapLike = (wt.Trap, wt.WasmtimeError)


# --- host functions -----------------------------------------------------------


def test_host_reads_guest_string_in_a_loop() -> None:
    seen: list[bytes] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        ptr, length = args
        assert isinstance(ptr, int) and isinstance(length, int)
        data = call.read(ptr, length)
        if not seen:
            seen.append(data)
        return len(data)

    guest = Guest(impl)
    n = 5000
    assert guest.raw("run")(GREETING_PTR, len(GREETING), n) == n * len(GREETING)
    assert guest.call("run", GREETING_PTR, len(GREETING), 10) == 10 * len(GREETING)
    assert seen == [GREETING]


@pytest.mark.parametrize(
    ("ptr", "length"),
    [
        pytest.param(65536 - 4, 8, id="past-end"),
        pytest.param(0xFFFFFFF0, 4, id="negative-ptr"),
        pytest.param(0x7FFFFFF0, 0x7FFFFFF0, id="ptr+len-beyond-memory"),
        pytest.param(16, 0xFFFFFFF8, id="ptr+len-wraps-u32"),
    ],
)
@pytest.mark.parametrize("api", ["raw", "high-level"])
def test_out_of_bounds_read_traps_and_store_stays_usable(ptr: int, length: int, api: str) -> None:
    guest = Guest(strlen)
    with pytest.raises(TrapLike) as info:
        if api == "raw":
            guest.raw("call_host")(ptr, length)
        else:
            guest.call("call_host", ptr, length)
    assert "out of bounds: ptr=" in str(info.value)
    assert "memory=65536" in str(info.value)
    # The store is still usable: another export, and the host path again.
    assert guest.raw("add")(40, 2) == 42
    assert guest.raw("call_host")(GREETING_PTR, len(GREETING)) == len(GREETING)


def test_out_of_bounds_write_traps() -> None:
    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        call.write(call.memory_size - 2, b"abcd")
        return 0

    guest = Guest(impl)
    with pytest.raises(TrapLike, match="out of bounds: ptr=65534 len=4 memory=65536"):
        guest.raw("call_host")(0, 0)
    assert guest.raw("add")(1, 2) == 3


def test_python_exception_becomes_trap_without_leaking(capfd: pytest.CaptureFixture[str]) -> None:
    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        raise ValueError(f"boom {args[0]}")

    guest = Guest(impl)
    with pytest.raises(TrapLike, match="ValueError: boom 42"):
        guest.raw("call_host")(42, 0)
    with pytest.raises(TrapLike, match="ValueError: boom 7"):
        guest.call("call_host", 7, 0)
    assert guest.raw("add")(2, 2) == 4
    err = capfd.readouterr().err
    assert "Exception ignored" not in err
    assert "Traceback" not in err


def test_guest_call_error_message_is_used_verbatim() -> None:
    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        raise GuestCallError("bad handle 7")

    with pytest.raises(TrapLike, match="bad handle 7") as info:
        Guest(impl).raw("call_host")(0, 0)
    assert "GuestCallError" not in str(info.value)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("nope", "TypeError: expected an int for i32, got str"),
        (None, "TypeError: expected an int for i32, got NoneType"),
        (1 << 32, "OverflowError: 4294967296 does not fit in i32"),
    ],
)
def test_bad_return_value_becomes_trap(returned: object, message: str) -> None:
    guest = Guest(lambda call, args: returned)  # type: ignore[arg-type,return-value]
    with pytest.raises(TrapLike, match=message):
        guest.raw("call_host")(0, 0)


def test_i32_result_accepts_unsigned_spelling() -> None:
    guest = Guest(lambda call, args: 0xFFFFFFFF)
    assert guest.raw("call_host")(0, 0) == -1


def test_host_call_is_invalid_after_return() -> None:
    kept: list[HostCall] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        kept.append(call)
        return 0

    Guest(impl).raw("call_host")(0, 0)
    with pytest.raises(RuntimeError, match="after its host function returned"):
        kept[0].read(0, 1)


def test_guest_without_memory_export() -> None:
    wat = """(module
      (import "env" "host" (func $host (param i32 i32) (result i32)))
      (memory 1)
      (func (export "go") (result i32) (call $host (i32.const 0) (i32.const 1))))"""
    store = wt.Store()
    host = fp.define_unchecked(store, HOST_TYPE, strlen)
    instance = wt.Instance(store, wt.Module(store.engine, wasm(wat)), [host])
    go = instance.exports(store)["go"]
    assert isinstance(go, wt.Func)
    with pytest.raises(TrapLike, match="does not export a linear memory named 'memory'"):
        RawFunc(store, go)()


# --- re-entrant calls -----------------------------------------------------------


def filler(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def reentrant_guest(engine: wt.Engine | None = None,
                    single_instance: bool = False) -> tuple[Guest, list[int]]:
    """Guest whose host import allocates n bytes via wasm_alloc, fills them and returns the pointer."""
    alloc: list[RawFunc] = []
    sizes: list[int] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        n = args[0]
        assert isinstance(n, int)
        before = call.memory_size
        ptr = call.call(alloc[0], n)
        assert isinstance(ptr, int)
        sizes.extend([before, call.memory_size])
        call.write(ptr, filler(n))
        return ptr

    guest = Guest(impl, engine, single_instance)
    alloc.append(guest.raw("wasm_alloc"))
    return guest, sizes


@pytest.mark.parametrize("single_instance", [False, True])
def test_reentrant_alloc_write_and_guest_reads_back(single_instance: bool) -> None:
    guest, sizes = reentrant_guest(single_instance=single_instance)
    fetch_and_sum = guest.raw("fetch_and_sum")
    for n in (1, 100, 1000):
        assert fetch_and_sum(n) == sum(filler(n))
    assert sizes[-1] == 65536  # no growth needed yet


@pytest.mark.parametrize("single_instance", [False, True])
def test_reentrant_alloc_that_grows_and_moves_memory(single_instance: bool) -> None:
    config = wt.Config()
    # Make growth reallocate so that the base address really moves.
    config.memory_may_move = True
    config.memory_reservation = 0
    config.memory_reservation_for_growth = 0
    config.memory_guard_size = 0
    guest, sizes = reentrant_guest(wt.Engine(config), single_instance)
    if single_instance:  # a first call caches the memory export; growth must still be seen
        assert guest.raw("fetch_and_sum")(1) == sum(filler(1))
        sizes.clear()
    base_before = ctypes.addressof(guest.memory.data_ptr(guest.store).contents)
    n = 300_000
    assert guest.raw("fetch_and_sum")(n) == sum(filler(n))
    assert sizes == [65536, 5 * 65536]  # heap starts at 1024: 301024 bytes -> 5 pages
    assert ctypes.addressof(guest.memory.data_ptr(guest.store).contents) != base_before
    start = 1024 + (1 if single_instance else 0)  # after the warm-up's 1-byte block, if any
    assert guest.memory.read(guest.store, start, start + n) == filler(n)


def test_fixed_memory_engine_grows_in_place_and_keeps_the_view() -> None:
    engine = fp.fixed_memory_engine(wt.Config())
    guest, sizes = reentrant_guest(engine, single_instance=True)
    fetch_and_sum = guest.raw("fetch_and_sum")
    assert fetch_and_sum(1) == sum(filler(1))
    base_before = ctypes.addressof(guest.memory.data_ptr(guest.store).contents)
    n = 300_000  # the re-entrant alloc grows the memory to 5 pages mid-call
    assert fetch_and_sum(n) == sum(filler(n))
    assert sizes[-2:] == [65536, 5 * 65536]
    assert ctypes.addressof(guest.memory.data_ptr(guest.store).contents) == base_before
    assert guest.memory.read(guest.store, 1025, 1025 + n) == filler(n)


@pytest.mark.parametrize("fixed", [False, True])
def test_memory_view_is_kept_only_for_fixed_single_instance_stores(fixed: bool) -> None:
    views: list[memoryview] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        ptr, length = args
        assert isinstance(ptr, int) and isinstance(length, int)
        data = call.read(ptr, length)
        views.append(call._mv)  # type: ignore[arg-type]  # the view it read through
        return len(data)

    engine = fp.fixed_memory_engine(wt.Config()) if fixed else wt.Engine()
    run = Guest(impl, engine, single_instance=True).raw("run")
    assert run(GREETING_PTR, len(GREETING), 3) == 3 * len(GREETING)
    assert (views[0] is views[1] is views[2]) == fixed
    # Kept or not, every range is still checked against the memory's current size.
    call_host = Guest(impl, engine, single_instance=True).raw("call_host")
    assert call_host(65536 - 4, 4) == 4
    for ptr, length in [(65536 - 3, 4), (-1, 1), (0, -1), (0x7FFFFFF0, 0x7FFFFFF0)]:
        with pytest.raises(TrapLike, match=f"out of bounds: ptr={ptr} len={length}"):
            call_host(ptr, length)


def test_trap_inside_reentrant_call_is_a_guest_trap() -> None:
    boom: list[RawFunc] = []
    caught: list[GuestTrap] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        try:
            call.call(boom[0])
        except GuestTrap as exc:
            caught.append(exc)
        if args[0]:
            call.call(boom[0])  # this time let it propagate
        return 5

    guest = Guest(impl)
    boom.append(guest.raw("boom"))
    assert guest.raw("call_host")(0, 0) == 5
    assert isinstance(caught[0].error, wt.Trap)
    assert caught[0].error.trap_code == wt.TrapCode.UNREACHABLE
    with pytest.raises(wt.Trap) as info:
        guest.raw("call_host")(1, 0)
    # The guest's own trap is handed back, so its code survives the host frame.
    assert info.value.trap_code == wt.TrapCode.UNREACHABLE


def test_host_call_rejects_function_of_another_store() -> None:
    other = Guest(strlen).raw("add")

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        result = call.call(other, 1, 2)
        assert isinstance(result, int)
        return result

    with pytest.raises(TrapLike, match="belongs to a different Store"):
        Guest(impl).raw("call_host")(0, 0)


# --- value decoding -------------------------------------------------------------

TYPED_WAT = r"""
(module
  (import "env" "typed" (func $typed (param i64 f32 f64 i32) (result f64)))
  (import "env" "ret64" (func $ret64 (param i64) (result i64)))
  (import "env" "nothing" (func $nothing))
  (func (export "call_typed") (result f64)
    (call $typed (i64.const -5) (f32.const 0.5) (f64.const -2.25) (i32.const -1)))
  (func (export "call_ret64") (param i64) (result i64) (call $ret64 (local.get 0)))
  (func (export "call_nothing") (call $nothing))
  (func (export "mix") (param $a i64) (param $b f32) (result f32)
    (f32.add (f32.convert_i64_s (local.get $a)) (local.get $b)))
)
"""


def typed_instance() -> tuple[wt.Store, wt.Instance, list[tuple[int | float, ...]]]:
    store = wt.Store()
    seen: list[tuple[int | float, ...]] = []

    def typed(call: HostCall, args: tuple[int | float, ...]) -> float:
        seen.append(args)
        return 1.75

    def ret64(call: HostCall, args: tuple[int | float, ...]) -> int:
        value = args[0]
        assert isinstance(value, int)
        return (1 << 64) - 1 if value == 0 else value * 3

    def nothing(call: HostCall, args: tuple[int | float, ...]) -> None:
        seen.append(args)

    imports = [
        fp.define_unchecked(store, wt.FuncType([I64, F32, F64, I32], [F64]), typed),
        fp.define_unchecked(store, wt.FuncType([I64], [I64]), ret64),
        fp.define_unchecked(store, wt.FuncType([], []), nothing),
    ]
    module = wt.Module(store.engine, wasm(TYPED_WAT))
    return store, wt.Instance(store, module, imports), seen


def export(store: wt.Store, instance: wt.Instance, name: str) -> RawFunc:
    func = instance.exports(store)[name]
    assert isinstance(func, wt.Func)
    return RawFunc(store, func)


def test_i64_f32_f64_params_and_results_decode() -> None:
    store, instance, seen = typed_instance()
    assert export(store, instance, "call_typed")() == 1.75
    assert seen == [(-5, 0.5, -2.25, -1)]
    call_ret64 = export(store, instance, "call_ret64")
    assert call_ret64(-7) == -21
    assert call_ret64(0) == -1  # host returned 2**64-1, the guest sees -1
    assert call_ret64((1 << 64) - 2) == -6  # unsigned spelling of -2 accepted as an argument
    assert export(store, instance, "call_nothing")() is None
    assert seen[-1] == ()
    assert export(store, instance, "mix")(-5, 0.5) == -4.5


def test_func_type_shared_across_engines_does_not_abort() -> None:
    # libwasmtime 50 aborts if one wasm_functype_t is used with two Engines.
    ty = wt.FuncType([I32, I32], [I32])
    for _ in range(3):
        store = wt.Store(wt.Engine())
        func = fp.define_unchecked(store, ty, lambda call, args: args[0])
        assert RawFunc(store, func)(9, 0) == 9


def test_unsupported_types_are_rejected() -> None:
    store = wt.Store()
    with pytest.raises(ValueError, match="only i32/i64/f32/f64"):
        fp.define_unchecked(store, wt.FuncType([wt.ValType.externref()], []), strlen)
    with pytest.raises(ValueError, match="at most one result"):
        fp.define_unchecked(store, wt.FuncType([], [I32, I32]), strlen)


# --- RawFunc --------------------------------------------------------------------


def test_raw_func_i32_call_and_argument_checks() -> None:
    guest = Guest(strlen)
    add = guest.raw("add")
    assert add(2, 3) == 5
    assert add(-10, 3) == -7
    assert add(0xFFFFFFFF, 1) == 0
    assert add(0x7FFFFFFF, 1) == -0x80000000
    with pytest.raises(TypeError, match="expected 2 arguments, got 1"):
        add(1)
    with pytest.raises(TypeError, match="bad arguments"):
        add(1 << 32, 0)
    with pytest.raises(TypeError, match="bad arguments"):
        add(1.5, 0)


def test_raw_func_trap_raises_wasmtime_trap() -> None:
    guest = Guest(strlen)
    with pytest.raises(wt.Trap) as info:
        guest.raw("boom")()
    assert info.value.trap_code == wt.TrapCode.UNREACHABLE
    assert guest.raw("add")(1, 1) == 2


def test_raw_func_matches_high_level_results() -> None:
    guest = Guest(strlen)
    for a, b in [(0, 0), (1, -1), (123456, 654321), (-(2**31), -1)]:
        assert guest.raw("add")(a, b) == guest.call("add", a, b)


# --- epoch interruption ---------------------------------------------------------


@pytest.fixture
def epoch_engine() -> Iterator[wt.Engine]:
    config = wt.Config()
    config.epoch_interruption = True
    engine = wt.Engine(config)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.01):
            engine.increment_epoch()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    yield engine
    stop.set()
    ticker.join()


def test_epoch_interrupt_surfaces_as_trap(epoch_engine: wt.Engine) -> None:
    guest = Guest(strlen, epoch_engine)
    guest.store.set_epoch_deadline(1)
    with pytest.raises(wt.Trap) as info:
        guest.raw("spin")()
    assert info.value.trap_code == wt.TrapCode.INTERRUPT
    guest.store.set_epoch_deadline(1_000_000)
    assert guest.raw("add")(1, 2) == 3


def test_epoch_interrupt_inside_reentrant_call_keeps_its_code(epoch_engine: wt.Engine) -> None:
    spin: list[RawFunc] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        call.call(spin[0])
        return 0

    guest = Guest(impl, epoch_engine)
    spin.append(guest.raw("spin"))
    guest.store.set_epoch_deadline(1)
    with pytest.raises(wt.Trap) as info:
        guest.raw("call_host")(0, 0)
    assert info.value.trap_code == wt.TrapCode.INTERRUPT


def test_fuel_exhaustion_surfaces_as_trap() -> None:
    config = wt.Config()
    config.consume_fuel = True
    guest = Guest(strlen, wt.Engine(config))
    guest.store.set_fuel(100_000)
    with pytest.raises(wt.Trap) as info:
        guest.raw("spin")()
    assert info.value.trap_code == wt.TrapCode.OUT_OF_FUEL


# --- threads --------------------------------------------------------------------


def test_two_threads_with_own_stores_run_concurrently() -> None:
    engine = wt.Engine()
    n = 20_000
    barrier = threading.Barrier(2)
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:

            def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
                return strlen(call, args) + k

            guest = Guest(impl, engine)
            run = guest.raw("run")
            barrier.wait()
            total = 0
            for _ in range(5):
                result = run(GREETING_PTR, len(GREETING), n)
                assert isinstance(result, int)
                total += result
            results[k] = total
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {k: 5 * n * (len(GREETING) + k) for k in (1, 2)}


# --- lifetime and pinning -------------------------------------------------------


def test_registry_entry_freed_with_store() -> None:
    gc.collect()
    store = wt.Store()
    func = fp.define_unchecked(store, HOST_TYPE, strlen)
    env = max(fp._HOSTS)
    assert fp._HOSTS[env].fn is strlen
    del func, store
    gc.collect()
    assert env not in fp._HOSTS


def test_import_refuses_other_wasmtime_version(monkeypatch: pytest.MonkeyPatch) -> None:
    real_version = importlib.metadata.version

    def fake_version(name: str) -> str:
        return "49.0.0" if name == "wasmtime" else real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    path = Path(fp.__file__)
    spec = importlib.util.spec_from_file_location("fastpath_pin_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"wasmtime==50\.0\.1.*wasmtime==49\.0\.0"):
        spec.loader.exec_module(module)


# --- FuncType cache across engines ----------------------------------------------


@pytest.mark.parametrize("as_signature", [False, True])
def test_func_type_cache_is_per_engine(as_signature: bool) -> None:
    # One FuncType per (Engine, signature), shared by that Engine's stores and
    # never handed to another Engine (libwasmtime 50 would abort the process).
    ty: Any = (("i32", "i32"), ("i32",)) if as_signature else wt.FuncType([I32, I32], [I32])
    engines = [wt.Engine(), wt.Engine()]
    for _ in range(2):
        for k, engine in enumerate(engines):
            store = wt.Store(engine)
            func = fp.define_unchecked(store, ty, lambda call, args: args[0] + args[1])
            assert RawFunc(store, func)(k, 40) == 40 + k
    key = (("i32", "i32"), ("i32",))
    cached = [fp._ENGINE_FUNC_TYPES[engine][key] for engine in engines]
    assert cached[0] is not cached[1]
    store = wt.Store(engines[0])
    fp.define_unchecked(store, ty, lambda call, args: 0)
    assert fp._ENGINE_FUNC_TYPES[engines[0]][key] is cached[0]
    # The cache keeps no Engine alive, and an Engine's entry goes with it.
    refs = [weakref.ref(engine) for engine in engines]
    count = len(fp._ENGINE_FUNC_TYPES)
    del engines, engine, store, cached
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert len(fp._ENGINE_FUNC_TYPES) <= count - 2


def test_define_unchecked_with_signature() -> None:
    guest_store = wt.Store()
    imports = [
        fp.define_unchecked(guest_store, (("i64", "f32", "f64", "i32"), ("f64",)),
                            lambda call, args: 1.75),
        fp.define_unchecked(guest_store, (("i64",), ("i64",)), lambda call, args: args[0]),
        fp.define_unchecked(guest_store, ((), ()), lambda call, args: None),
    ]
    instance = wt.Instance(guest_store, wt.Module(guest_store.engine, wasm(TYPED_WAT)), imports)
    assert export(guest_store, instance, "call_typed")() == 1.75
    assert export(guest_store, instance, "call_ret64")(-7) == -7
    with pytest.raises(ValueError, match="only i32/i64/f32/f64 parameters, not v128"):
        fp.define_unchecked(guest_store, (("v128",), ()), strlen)
    with pytest.raises(ValueError, match="at most one result"):
        fp.define_unchecked(guest_store, ((), ("i32", "i32")), strlen)
    with pytest.raises(TypeError, match="FuncType or a \\(params, results\\) signature"):
        fp.define_unchecked(guest_store, "i32", strlen)  # type: ignore[arg-type]


# --- RawInstance / RawMemory ------------------------------------------------------


def raw_guest(impl: HostImpl = strlen, engine: wt.Engine | None = None,
              wat: str = MAIN_WAT) -> tuple[wt.Store, wt.Module, fp.RawInstance]:
    engine = engine or wt.Engine()
    store = wt.Store(engine)
    module = wt.Module(engine, wasm(wat))
    host = fp.define_unchecked(store, HOST_TYPE, impl, single_instance=True)
    return store, module, fp.RawInstance(store, module, [host])


def test_raw_instance_exports_by_name_without_type_queries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, module, instance = raw_guest()
    assert instance.func("add")(40, 2) == 42  # the first instance reads the module's types

    def no_type_queries(*args: object) -> None:
        raise AssertionError("asked libwasmtime for a type")

    monkeypatch.setattr(wt.Func, "type", no_type_queries)
    monkeypatch.setattr(wt.Module, "exports", property(no_type_queries))
    other = fp.RawInstance(store, module, [fp.define_unchecked(store, HOST_TYPE, strlen)])
    assert other.func("add")(1, 2) == 3
    assert other.func("call_host")(GREETING_PTR, len(GREETING)) == len(GREETING)
    with pytest.raises(wt.Trap) as info:
        other.func("boom")()
    assert info.value.trap_code == wt.TrapCode.UNREACHABLE
    assert other.memory().read(GREETING_PTR, len(GREETING)) == GREETING


def test_raw_instance_export_errors() -> None:
    wat = """(module
      (memory (export "memory") 1)
      (global (export "g") i32 (i32.const 1))
      (func (export "f") (result i32) (i32.const 7))
      (func (export "two") (result i32 i32) (i32.const 1) (i32.const 2))
      (func (export "ref") (param externref)))"""
    store = wt.Store()
    instance = fp.RawInstance(store, wt.Module(store.engine, wasm(wat)), [])
    assert instance.func("f")() == 7
    with pytest.raises(KeyError):
        instance.func("missing")
    with pytest.raises(KeyError):
        instance.memory("missing")
    with pytest.raises(TypeError, match="'memory' is not a function"):
        instance.func("memory")
    with pytest.raises(TypeError, match="'g' is not a function"):
        instance.func("g")
    with pytest.raises(TypeError, match="'f' is not a memory"):
        instance.memory("f")
    with pytest.raises(ValueError, match="at most one result"):
        instance.func("two")
    with pytest.raises(ValueError, match="only i32/i64/f32/f64 parameters"):
        instance.func("ref")


def test_raw_instance_types_are_cached_per_module() -> None:
    # Same export name, different signatures: each instance uses its own module's.
    engine = wt.Engine()
    store = wt.Store(engine)
    a = wt.Module(engine, wasm('(module (func (export "f") (param i32) (result i32) '
                               '(i32.add (local.get 0) (i32.const 1))))'))
    b = wt.Module(engine, wasm('(module (func (export "f") (param i64 i64) (result i64) '
                               '(i64.mul (local.get 0) (local.get 1))))'))
    for _ in range(2):
        assert fp.RawInstance(store, a, []).func("f")(41) == 42
        assert fp.RawInstance(store, b, []).func("f")(1 << 33, 3) == 3 << 33


def test_raw_instance_instantiation_failures() -> None:
    store = wt.Store()
    module = wt.Module(store.engine, wasm(MAIN_WAT))
    with pytest.raises(wt.WasmtimeError, match="expected 1 imports, found 0"):
        fp.RawInstance(store, module, [])
    wrong = fp.define_unchecked(store, (("i32",), ()), lambda call, args: None)
    with pytest.raises(wt.WasmtimeError, match="incompatible import type"):
        fp.RawInstance(store, module, [wrong])
    start_traps = wt.Module(store.engine, wasm("(module (func $s unreachable) (start $s))"))
    with pytest.raises(wt.Trap) as info:
        fp.RawInstance(store, start_traps, [])
    assert info.value.trap_code == wt.TrapCode.UNREACHABLE
    with pytest.raises(TypeError, match="must be wasmtime.Func"):
        fp.RawInstance(store, module, [object()])  # type: ignore[list-item]


def test_start_function_is_interrupted_while_instantiating(epoch_engine: wt.Engine) -> None:
    # Instantiation runs guest code: it must release the GIL so the (Python)
    # epoch ticker can interrupt it.
    store = wt.Store(epoch_engine)
    store.set_epoch_deadline(1)
    spins = wt.Module(epoch_engine, wasm("(module (func $s (loop $l (br $l))) (start $s))"))
    with pytest.raises(wt.Trap) as info:
        fp.RawInstance(store, spins, [])
    assert info.value.trap_code == wt.TrapCode.INTERRUPT


def _runs_within(seconds: float, fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn`` on a thread; the exception it raised (None if none), or fail after
    ``seconds`` (a guest nobody interrupts would run forever)."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            raised.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            raised.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert raised, f"guest code still running after {seconds} s: nothing interrupted it"
    return raised[0]


def test_runtime_ticker_ticks_only_while_guest_code_runs(tmp_path: Path) -> None:
    from daemon.extensions.runtime import WasmRuntime

    rt = WasmRuntime(tmp_path, epoch_tick_ms=10)
    try:
        # Nothing runs guest code: no ticks (ten would have come in 0.1 s).
        before = rt.epoch
        threading.Event().wait(0.1)
        assert rt.epoch == before
        # A start function is interrupted: instantiating counts as guest code.
        store = wt.Store(rt.engine)
        store.set_epoch_deadline(3)
        spins = wt.Module(rt.engine, wasm("(module (func $s (loop $l (br $l))) (start $s))"))
        e = _runs_within(10, lambda: fp.RawInstance(store, spins, []))
        assert isinstance(e, wt.Trap) and e.trap_code == wt.TrapCode.INTERRUPT
        # So is an export called through RawFunc, the other way in.
        guest = Guest(strlen, rt.engine)
        guest.store.set_epoch_deadline(3)
        e = _runs_within(10, guest.raw("spin"))
        assert isinstance(e, wt.Trap) and e.trap_code == wt.TrapCode.INTERRUPT
        assert rt.epoch > before
    finally:
        rt.close()


def test_raw_memory_bounds_checks() -> None:
    store, _, instance = raw_guest()
    memory = instance.memory()
    assert memory.size() == 65536
    memory.write(65536 - 4, bytearray(b"abcd"))
    assert memory.read(65536 - 4, 4) == b"abcd"
    memory.write(65536, b"")
    assert memory.read(65536, 0) == b""
    for ptr, length in [(65536 - 3, 4), (-1, 1), (0, 65537), (0x7FFFFFF0, 0x7FFFFFF0)]:
        with pytest.raises(IndexError, match=f"out of bounds: ptr={ptr} len={length} memory=65536"):
            memory.write(ptr, b"x" * length)
        with pytest.raises(IndexError, match="out of bounds"):
            memory.read(ptr, length)
    with pytest.raises(IndexError, match="len=-1"):
        memory.read(0, -1)


def test_raw_memory_follows_growth_and_moves() -> None:
    config = wt.Config()
    config.memory_may_move = True
    config.memory_reservation = 0
    config.memory_reservation_for_growth = 0
    config.memory_guard_size = 0
    store, _, instance = raw_guest(engine=wt.Engine(config))
    memory = instance.memory()
    alloc, total = instance.func("wasm_alloc"), instance.func("sum")
    ptr = alloc(300_000)
    assert isinstance(ptr, int)
    assert memory.size() == 5 * 65536
    data = filler(300_000)
    memory.write(ptr, data)
    assert total(ptr, len(data)) == sum(data)
    assert memory.read(ptr, len(data)) == data


# --- RawFunc.detached -------------------------------------------------------------


def test_detached_raw_func_works_only_through_host_call() -> None:
    alloc: list[RawFunc] = []

    def impl(call: HostCall, args: tuple[int | float, ...]) -> int:
        n = args[0]
        assert isinstance(n, int)
        ptr = call.call(alloc[0], n)
        assert isinstance(ptr, int)
        call.write(ptr, filler(n))
        return ptr

    store, _, instance = raw_guest(impl)
    alloc.append(instance.func("wasm_alloc").detached())
    assert instance.func("fetch_and_sum")(100) == sum(filler(100))
    with pytest.raises(RuntimeError, match="only be called through HostCall.call"):
        alloc[0](1)
    # It does not keep its store alive.
    ref = weakref.ref(store)
    del store, instance
    gc.collect()
    assert ref() is None


# --- GuestInstance ----------------------------------------------------------------

JOB_WAT = """(module
  (import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (global $bad (mut i32) (i32.const 0))
  (func (export "wasm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (if (global.get $bad) (then (return (i32.const 65530))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "wasm_free") (param i32 i32))
  (func (export "plugin_init") (result i32) (i32.const 0))
  (func (export "plugin_cleanup") (result i32) (i32.const 0))
  (func (export "set_bad") (result i32) (global.set $bad (i32.const 1)) (i32.const 0))
  ;; Returns the byte sum of ctx and state.
  (func $sum (param $p i32) (param $n i32) (result i32)
    (local $acc i32)
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $acc (i32.add (local.get $acc) (i32.load8_u (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $again)))
    (local.get $acc))
  (func (export "job") (param i32 i32 i32 i32) (result i32)
    (i32.add (call $sum (local.get 0) (local.get 1)) (call $sum (local.get 2) (local.get 3))))
  (func (export "trap") (param i32 i32 i32 i32) (result i32) unreachable))
"""


def guest_instance(engine: wt.Engine, module: wt.Module) -> Any:
    from daemon.config import ExtensionLimits
    from daemon.extensions.host_functions import HostEnv, LogLimiter
    from daemon.extensions.instance import GuestInstance
    from daemon.jobs.context import ContextRegistry

    limits = ExtensionLimits()
    none: Any = None  # no RPC: the guest here never calls spacedrive_call
    env = HostEnv("t", none, none, ContextRegistry(), limits, LogLimiter(), 1 << 30,
                  threading.Event(), phase="job")
    return GuestInstance(engine, module, env, 16 << 20, limits)


def test_guest_instance_runs_jobs_and_frees_its_store() -> None:
    from daemon.errors import ExtensionError

    engine = wt.Engine()
    module = wt.Module(engine, wasm(JOB_WAT))
    gc.collect()
    hosts = len(fp._HOSTS)
    refs = []
    for _ in range(3):
        instance = guest_instance(engine, module)
        assert instance.run_job("job", b"ctx", b"{}") == sum(b"ctx{}")
        assert instance._func("job") is instance._func("job")  # wrapped once
        with pytest.raises(ExtensionError, match="unreachable"):
            instance.call("trap", 0, 0, 0, 0)
        refs.append(weakref.ref(instance.store))
        del instance
    gc.collect()
    # Nothing keeps a Store alive: not the host functions' env (env.alloc), not the registry.
    assert [ref() for ref in refs] == [None] * 3
    assert len(fp._HOSTS) == hosts


def test_guest_instance_refuses_out_of_bounds_alloc() -> None:
    from daemon.errors import ExtensionError

    engine = wt.Engine()
    instance = guest_instance(engine, wt.Module(engine, wasm(JOB_WAT)))
    instance.call("set_bad")
    with pytest.raises(ExtensionError, match=re.escape(
            "the guest's wasm_alloc(16) returned 65530 for the job's state, but [65530, 65546) "
            "is outside its memory of 65536 bytes")):
        instance.put(b"x" * 16, "state")
    instance.put(b"x" * 6)  # 65530 + 6 is still inside
    assert instance.memory.read(65530, 6) == b"x" * 6
