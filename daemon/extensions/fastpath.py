"""Fast path across the wasmtime host/guest boundary.

wasmtime-py's ``Func`` re-derives the function type and boxes every value in a
``wasmtime_val_t`` on each crossing (~10-13 µs).  libwasmtime also exports
*unchecked* entry points that pass arguments and results in one array of raw
16-byte ``wasmtime_val_raw_t`` slots whose types the caller vouches for:

* ``wasmtime_func_new_unchecked``: a host function receiving raw slots
  (:func:`define_unchecked`, with :class:`HostCall` as its view of the guest);
* ``wasmtime_func_call_unchecked``: a call passing raw slots
  (:class:`RawFunc`, and :meth:`HostCall.call` for re-entrant calls).

:class:`RawInstance` instantiates a module and hands out its exports by name
(``wasmtime_instance_export_get``) as :class:`RawFunc` and :class:`RawMemory`.

Each signature is compiled once into a ``struct`` layout (cached process-wide),
and the types of a module's exports are read once per Module, so wrapping an
export or defining a host function asks libwasmtime no type questions and a
crossing costs one ctypes call and one pack/unpack.

Nothing checks the raw slots against the C ABI at run time, so the module only
imports against the wasmtime release it was written for (see
``PINNED_WASMTIME_VERSION``).

Threads: one Store per thread.  Per-call state lives in per-call objects; the
shared state (host-function registry, signature layouts, per-Engine FuncTypes,
per-Module export types) is touched only by single dict operations (atomic
under the GIL); a lost race builds an equal value twice.
"""

from __future__ import annotations

import ctypes
import itertools
import struct
import threading
import weakref
from collections.abc import Callable, Sequence
from ctypes import CFUNCTYPE, PYFUNCTYPE, c_bool, c_char, c_char_p, c_size_t, c_uint64, c_void_p
from importlib import metadata
from typing import Final, NoReturn, cast

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _func as _wasmtime_func

PINNED_WASMTIME_VERSION: Final = "50.0.1"


def _check_wasmtime_pin() -> None:
    try:
        found = metadata.version("wasmtime")
    except metadata.PackageNotFoundError as exc:
        raise ImportError(
            f"daemon.extensions.fastpath needs wasmtime=={PINNED_WASMTIME_VERSION}, "
            "which is not installed"
        ) from exc
    if found != PINNED_WASMTIME_VERSION:
        raise ImportError(
            f"daemon.extensions.fastpath was written against wasmtime=={PINNED_WASMTIME_VERSION} "
            f"but wasmtime=={found} is installed; it calls libwasmtime's unchecked C entry "
            "points with hand-declared signatures and cannot run guests safely on another "
            f"release. Install wasmtime=={PINNED_WASMTIME_VERSION}."
        )


# Before anything below touches libwasmtime.
_check_wasmtime_pin()

if ctypes.sizeof(ffi.wasmtime_val_raw_t) != 16:  # pragma: no cover - guards the slot layout
    raise ImportError("unexpected wasmtime_val_raw_t size; fastpath's slot layout is wrong")

Number = int | float
HostFn = Callable[["HostCall", tuple[Number, ...]], Number | None]
Signature = tuple[tuple[str, ...], tuple[str, ...]]
"""(parameter kinds, result kinds); each kind is "i32", "i64", "f32" or "f64"."""

__all__ = [
    "GUEST_CODE",
    "PINNED_WASMTIME_VERSION",
    "GuestCallError",
    "GuestTrap",
    "HostCall",
    "HostFn",
    "RawFunc",
    "RawInstance",
    "RawMemory",
    "Signature",
    "define_unchecked",
    "epoch_incrementer",
    "fixed_memory_engine",
    "set_epoch_deadline",
]


# --- C entry points -----------------------------------------------------------
# Declared here rather than taken from wasmtime._bindings: with c_void_p
# everywhere, pointers cross as plain ints (no pointer-object churn on the hot
# path), and we never mutate the argtypes of functions wasmtime-py also uses.
#
# Calls that may run guest code (and so host functions, or a long loop that
# only the epoch ticker thread can stop) are CFUNCTYPE, which releases the GIL.
# The others are PYFUNCTYPE and keep it: they are short, never call back into
# Python and take no lock that a thread waiting for the GIL could hold, and
# under load every release hands the GIL to a busy thread, which costs far more
# than the call itself.

_SLOT_BYTES: Final = 16  # sizeof(wasmtime_val_raw_t)

_CALLBACK_T = CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)
"""wasmtime_func_unchecked_callback_t: (env, caller, args_and_results, len) -> wasm_trap_t*"""
_FINALIZER_T = CFUNCTYPE(None, c_void_p)

# Run guest code (a start function, an export): GIL released.
_func_call_unchecked = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)(
    ("wasmtime_func_call_unchecked", ffi.dll)
)
_instance_new = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_void_p)(
    ("wasmtime_instance_new", ffi.dll)
)
# Short and store-local: GIL kept.
_func_new_unchecked = PYFUNCTYPE(
    None, c_void_p, c_void_p, _CALLBACK_T, c_void_p, _FINALIZER_T, c_void_p
)(("wasmtime_func_new_unchecked", ffi.dll))
_instance_export_get = PYFUNCTYPE(c_bool, c_void_p, c_void_p, c_char_p, c_size_t, c_void_p)(
    ("wasmtime_instance_export_get", ffi.dll)
)
_caller_context = PYFUNCTYPE(c_void_p, c_void_p)(("wasmtime_caller_context", ffi.dll))
_caller_export_get = PYFUNCTYPE(c_bool, c_void_p, c_char_p, c_size_t, c_void_p)(
    ("wasmtime_caller_export_get", ffi.dll)
)
_memory_data = PYFUNCTYPE(c_void_p, c_void_p, c_void_p)(("wasmtime_memory_data", ffi.dll))
_memory_data_size = PYFUNCTYPE(c_size_t, c_void_p, c_void_p)(
    ("wasmtime_memory_data_size", ffi.dll)
)
_trap_new = PYFUNCTYPE(c_void_p, c_char_p, c_size_t)(("wasmtime_trap_new", ffi.dll))
_set_epoch_deadline = PYFUNCTYPE(None, c_void_p, c_uint64)(
    ("wasmtime_context_set_epoch_deadline", ffi.dll)
)
_increment_epoch = PYFUNCTYPE(None, c_void_p)(("wasmtime_engine_increment_epoch", ffi.dll))
# libc memmove keeping the GIL (ctypes.memmove releases it).
_memmove = PYFUNCTYPE(c_void_p, c_void_p, c_void_p, c_size_t)(
    cast(int, ctypes.cast(ctypes.memmove, c_void_p).value)
)

_EXTERN_FUNC: Final[int] = ffi.WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY: Final[int] = ffi.WASMTIME_EXTERN_MEMORY.value
_EXTERN_PAYLOAD_OFFSET: Final[int] = ffi.wasmtime_extern_t.of.offset


# --- value layout -------------------------------------------------------------
# Slots are little-endian (wasmtime supports only LE hosts).  wasmtime keeps the
# low 64 bits of every slot initialised and zero-extends i32/f32, so values are
# written into fresh zeroed slots and padded with zeros.

_I32, _I64, _F32, _F64 = "i32", "i64", "f32", "f64"
_SLOT_FORMAT: Final = {_I32: "i12x", _I64: "q8x", _F32: "f12x", _F64: "d8x"}
_VALTYPE: Final = {
    _I32: wasmtime.ValType.i32,
    _I64: wasmtime.ValType.i64,
    _F32: wasmtime.ValType.f32,
    _F64: wasmtime.ValType.f64,
}
_U64_SLOT = struct.Struct("<Q8x")
_F32_SLOT = struct.Struct("<f12x")
_F64_SLOT = struct.Struct("<d8x")


def _kinds(types: list[wasmtime.ValType]) -> tuple[str, ...]:
    return tuple(str(t) for t in types)


def _slot_struct(kinds: tuple[str, ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(_SLOT_FORMAT[k] for k in kinds))


def _int_bits(value: object, bits: int, kind: str) -> int:
    """`value` as the unsigned bit pattern of a `bits`-wide int; signed or unsigned accepted."""
    if not isinstance(value, int):
        raise TypeError(f"expected an int for {kind}, got {type(value).__name__}")
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise OverflowError(f"{value} does not fit in {kind}")
    return value & ((1 << bits) - 1)


def _float(value: object, kind: str) -> float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected a number for {kind}, got {type(value).__name__}")
    return float(value)


ResultWriter = Callable[["ctypes.Array[c_char]", object], None]


def _result_writer(kinds: tuple[str, ...]) -> ResultWriter:
    """Encoder of a host function's return value into slot 0."""
    if not kinds:

        def write_none(view: ctypes.Array[c_char], value: object) -> None:
            if value is not None:
                raise TypeError(f"host function has no results but returned {type(value).__name__}")

        return write_none
    kind = kinds[0]
    if kind == _I32 or kind == _I64:
        bits = 32 if kind == _I32 else 64

        top = 1 << (bits - 1)

        def write_int(view: ctypes.Array[c_char], value: object) -> None:
            if type(value) is int and 0 <= value < top:  # the usual case, checked inline
                _U64_SLOT.pack_into(view, 0, value)
            else:
                _U64_SLOT.pack_into(view, 0, _int_bits(value, bits, kind))

        return write_int
    slot = _F32_SLOT if kind == _F32 else _F64_SLOT

    def write_float(view: ctypes.Array[c_char], value: object) -> None:
        slot.pack_into(view, 0, _float(value, kind))

    return write_float


class _Sig:
    """Everything derived from one signature; built once, shared by every function of it."""

    __slots__ = ("args", "buffer_type", "key", "nparams", "nslots", "params", "result",
                 "results", "trap_index", "view_type", "write_result")

    def __init__(self, params: tuple[str, ...], results: tuple[str, ...]) -> None:
        for what, kinds in (("parameter", params), ("result", results)):
            for kind in kinds:
                if kind not in _SLOT_FORMAT:
                    raise ValueError(f"fastpath supports only i32/i64/f32/f64 {what}s, not {kind}")
        if len(results) > 1:
            raise ValueError("fastpath supports at most one result")
        self.key: Signature = (params, results)
        self.params, self.results = params, results
        self.nparams = len(params)
        self.nslots = max(len(params), len(results))
        self.args = _slot_struct(params)
        self.result = _slot_struct(results) if results else None
        # Guest calls: one zeroed buffer per call, the value slots then the wasm_trap_t* out slot.
        self.buffer_type = c_uint64 * (2 * self.nslots + 1)
        self.trap_index = 2 * self.nslots
        # Host functions: a view of the slots wasmtime passes in.
        self.view_type = c_char * (_SLOT_BYTES * self.nslots)
        self.write_result = _result_writer(results)

    def new_func_type(self) -> wasmtime.FuncType:
        return wasmtime.FuncType([_VALTYPE[k]() for k in self.params],
                                 [_VALTYPE[k]() for k in self.results])


_SIGS: dict[Signature, _Sig] = {}


def _sig(params: tuple[str, ...], results: tuple[str, ...]) -> _Sig:
    """The (cached) layout of a signature; ValueError if fastpath cannot carry it."""
    sig = _SIGS.get((params, results))
    if sig is None:
        sig = _SIGS.setdefault((params, results), _Sig(params, results))
    return sig


# A wasm_functype_t binds to the first Engine it is used with, and libwasmtime 50
# aborts the process (assertion `comes_from_same_engine`) if it is later used
# with another one: FuncTypes are therefore cached per Engine, and a caller's
# own FuncType is never passed down.  Weak keys: an Engine's entry (and its
# FuncTypes, which hold the native engine) goes when the Engine object does.
_ENGINE_FUNC_TYPES: weakref.WeakKeyDictionary[wasmtime.Engine, dict[Signature, wasmtime.FuncType]]
_ENGINE_FUNC_TYPES = weakref.WeakKeyDictionary()


def _func_type(engine: wasmtime.Engine, sig: _Sig) -> wasmtime.FuncType:
    types = _ENGINE_FUNC_TYPES.get(engine)
    if types is None:
        types = _ENGINE_FUNC_TYPES.setdefault(engine, {})
    ty = types.get(sig.key)
    if ty is None:
        ty = types.setdefault(sig.key, sig.new_func_type())
    return ty


_MEMORY_EXPORT: Final = "memory"
_OTHER_EXPORT: Final = "other"
ExportKind = Signature | str
_MODULE_EXPORTS: weakref.WeakKeyDictionary[wasmtime.Module, dict[str, ExportKind]]
_MODULE_EXPORTS = weakref.WeakKeyDictionary()


def _module_exports(module: wasmtime.Module) -> dict[str, ExportKind]:
    """Export name -> signature (functions), "memory" or "other"; read once per Module."""
    exports = _MODULE_EXPORTS.get(module)
    if exports is None:
        exports = {}
        for export in module.exports:
            ty = export.type
            if isinstance(ty, wasmtime.FuncType):
                exports[export.name] = (_kinds(ty.params), _kinds(ty.results))
            else:
                is_memory = isinstance(ty, wasmtime.MemoryType)
                exports[export.name] = _MEMORY_EXPORT if is_memory else _OTHER_EXPORT
        _MODULE_EXPORTS[module] = exports
    return exports


# --- errors -------------------------------------------------------------------


class GuestCallError(Exception):
    """A guest passed a bad argument to a host function; becomes a trap carrying this message."""


class GuestTrap(GuestCallError):
    """Guest code entered through :meth:`HostCall.call` trapped (or failed).

    If it propagates out of the host function, the guest's original trap (with
    its trap code, e.g. INTERRUPT) is what the outer caller sees.
    """

    def __init__(self, error: wasmtime.Trap | wasmtime.WasmtimeError) -> None:
        super().__init__(str(error))
        self.error = error

    def _take_trap(self) -> int | None:
        """Ownership of the original wasm_trap_t, once; None if there is none to hand back."""
        if not isinstance(self.error, wasmtime.Trap):
            return None
        try:
            ptr = self.error._consume()
        except ValueError:  # already handed back to wasmtime once
            return None
        address: int | None = ctypes.cast(ptr, c_void_p).value
        return address


# --- host side ----------------------------------------------------------------


class HostCall:
    """View of the calling instance, valid only during one host-function invocation.

    Memory is found through the caller's export named ``memory`` and accessed
    through a memoryview of ``[0, size)`` at its base address. Any call into the
    guest may grow it (a range beyond the view asks for the current size) and,
    unless the engine keeps memories in place (:func:`fixed_memory_engine`), move
    it (the view is rebuilt after each re-entrant call). For a ``single_instance``
    host function of a fixed-memory engine the view is kept across invocations.
    """

    __slots__ = ("_caller", "_ctx", "_host", "_mem", "_mem_extern", "_mv", "_store_id")

    def __init__(self, caller: int, store_id: int, host: _Host | None = None) -> None:
        self._caller: int | None = caller
        self._ctx: int | None = None  # wasmtime_context_t*, looked up on first use
        self._store_id = store_id
        self._host = host
        self._mem_extern: ffi.wasmtime_extern_t | None = None
        self._mem = 0  # address of the wasmtime_memory_t inside _mem_extern
        # The memory [0, size seen) at its base, valid until the next call into the guest
        # (or for as long as the memory lives, if the host function's view is kept).
        self._mv: memoryview | None = host.mv if host is not None else None

    def _live_caller(self) -> int:
        caller = self._caller
        if caller is None:
            raise RuntimeError("HostCall used after its host function returned")
        return caller

    def _context(self) -> int:
        ctx = self._ctx
        if ctx is None:
            host = self._host
            if host is not None and host.ctx:
                # One instance per store: every caller's context is the store's own
                # (a pointer to the store's inner state, stable for its life).
                ctx = self._ctx = host.ctx
            else:
                ctx = self._ctx = _caller_context(self._live_caller())
                if host is not None and host.cache_memory:
                    host.ctx = ctx
        return ctx

    def _memory(self) -> int:
        host = self._host
        if self._mem_extern is None and host is not None and host.mem_extern is not None:
            self._mem_extern, self._mem = host.mem_extern, host.mem
        if self._mem_extern is None:
            extern = ffi.wasmtime_extern_t()
            found = _caller_export_get(self._live_caller(), b"memory", 6, ctypes.byref(extern))
            # ctypes yields an int for this c_uint8 field; the bindings annotate it as c_uint8.
            if not found or cast(int, extern.kind) != _EXTERN_MEMORY:
                if found:  # e.g. a shared memory, whose extern owns a reference
                    ffi.wasmtime_extern_delete(ctypes.byref(extern))
                raise GuestCallError("guest does not export a linear memory named 'memory'")
            self._mem_extern = extern
            self._mem = ctypes.addressof(extern) + _EXTERN_PAYLOAD_OFFSET
            if host is not None and host.cache_memory:
                # One instance per store: its memory (store id + index) never changes.
                host.mem_extern, host.mem = extern, self._mem
        return self._mem

    def _view(self, ptr: int, length: int) -> memoryview:
        """The memory's view after checking [ptr, ptr+length) lies inside it."""
        mv = self._mv
        if mv is None or ptr < 0 or length < 0 or ptr + length > len(mv):
            mv = self._new_view(ptr, length)
        return mv

    def _new_view(self, ptr: int, length: int) -> memoryview:
        """A view of the memory as it is now; GuestCallError if [ptr, ptr+length) is outside."""
        host = self._host
        size = 0
        if self._mv is None and host is not None and host.cache_memory:
            # A linear memory never shrinks, so a size seen earlier is a lower bound:
            # only a range beyond it needs the current size.
            size = host.size_seen
        if size <= 0 or ptr < 0 or length < 0 or ptr + length > size:
            size = self._fresh_size()
        if ptr < 0 or length < 0 or ptr + length > size:
            raise GuestCallError(f"out of bounds: ptr={ptr} len={length} memory={size}")
        base: int = _memory_data(self._context(), self._memory()) or 0
        mv = self._mv = memoryview((c_char * size).from_address(base)).cast("B")
        if host is not None and host.fixed:
            host.mv = mv
        return mv

    def read(self, ptr: int, length: int) -> bytes:
        """Copy `length` bytes at guest address `ptr`."""
        mv = self._mv
        end = ptr + length
        if mv is None or ptr < 0 or length < 0 or end > len(mv):
            mv = self._new_view(ptr, length)
        return mv[ptr:end].tobytes()

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` to guest address `ptr`."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        mv = self._mv
        end = ptr + len(data)
        if mv is None or ptr < 0 or end > len(mv):
            mv = self._new_view(ptr, len(data))
        mv[ptr:end] = data

    def view(self, ptr: int, length: int) -> memoryview:
        """A writable view of `length` bytes at guest address `ptr`, for filling in place
        (e.g. ``os.preadv``). Valid only until the next call into the guest (which may
        grow and so move the memory); never keep it longer."""
        return self._view(ptr, length)[ptr:ptr + length]

    def _fresh_size(self) -> int:
        """The memory's current size (also remembered as the new lower bound)."""
        size: int = _memory_data_size(self._context(), self._memory())
        host = self._host
        if host is not None and host.cache_memory:
            host.size_seen = size
        return size

    @property
    def memory_size(self) -> int:
        """Current size of the guest's memory in bytes."""
        size: int = _memory_data_size(self._context(), self._memory())
        return size

    def set_epoch_deadline(self, ticks: int) -> None:
        """Give the calling guest ``ticks`` more epoch ticks before it is interrupted."""
        _set_epoch_deadline(self._context(), ticks)

    def call(self, func: RawFunc, *args: Number) -> Number | None:
        """Call guest function `func` re-entrantly through the caller's context.

        A trap in the guest raises :class:`GuestTrap`.
        """
        if func._store_id != self._store_id:
            # Calling across stores makes libwasmtime panic, which aborts the process.
            raise GuestCallError("HostCall.call: function belongs to a different Store")
        host = self._host
        if host is None or not host.fixed:
            self._mv = None  # the guest may grow and so move its memory
        return func._invoke(self._context(), args, nested=True)

    def _invalidate(self) -> None:
        self._caller = self._ctx = self._mem_extern = self._mv = None
        self._mem = 0


class _Host:
    """Registry entry for one host function created by define_unchecked."""

    __slots__ = ("args", "cache_memory", "ctx", "fixed", "fn", "mem", "mem_extern", "mv",
                 "nparams", "size_seen", "store_id", "view_type", "write_result")

    def __init__(self, fn: HostFn, sig: _Sig, cache_memory: bool = False,
                 fixed: bool = False) -> None:
        self.cache_memory = cache_memory
        # The memory never moves (one instance, a fixed-memory engine): its view is kept.
        self.fixed = fixed
        self.mv: memoryview | None = None
        self.ctx = 0  # the store's context, once seen (single-instance stores only)
        self.size_seen = 0  # the memory's size when last asked (it never shrinks)
        self.mem_extern: ffi.wasmtime_extern_t | None = None
        self.mem = 0
        self.fn = fn
        self.nparams = sig.nparams
        self.view_type = sig.view_type
        self.args = sig.args
        self.write_result = sig.write_result
        self.store_id = 0  # set once wasmtime has created the Func


# env handle (the C `void *env`) -> _Host.  Handles are never reused.
_HOSTS: dict[int, _Host] = {}
_ENV_IDS = itertools.count(1)


def _trampoline(env: int | None, caller: int | None, raw: int | None, nraw: int) -> int:
    # Runs on the thread that called into the guest, with the GIL re-acquired by
    # ctypes.  No exception may escape: ctypes would print it and return 0, i.e.
    # report success with garbage results.
    call: HostCall | None = None
    try:
        host = _HOSTS[env or 0]
        call = HostCall(caller or 0, host.store_id, host)
        # For a () -> () function wasmtime may pass no array at all.
        view = host.view_type.from_address(raw) if raw else host.view_type()
        args: tuple[Number, ...] = host.args.unpack_from(view) if host.nparams else ()
        host.write_result(view, host.fn(call, args))
        return 0
    except BaseException as exc:  # noqa: BLE001 - everything becomes a trap
        return _trap_from_exception(exc)
    finally:
        if call is not None:
            call._invalidate()


def _trap_from_exception(exc: BaseException) -> int:
    """A new wasm_trap_t* (owned by wasmtime once returned) describing `exc`."""
    try:
        if isinstance(exc, GuestTrap):
            original = exc._take_trap()
            if original:
                return original
        if isinstance(exc, GuestCallError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: BLE001 - e.g. a __str__ that raises
        message = f"{type(exc).__name__} (message unavailable)"
    data = message.encode("utf-8", "backslashreplace")
    trap: int | None = _trap_new(data, len(data))
    return trap or 0


def _finalize(env: int | None) -> None:
    # Called by wasmtime when the Store drops the function, possibly during
    # interpreter shutdown when module globals are already gone.
    try:
        _HOSTS.pop(env or 0, None)
    except BaseException:  # noqa: BLE001
        pass


_TRAMPOLINE = _CALLBACK_T(_trampoline)
_FINALIZER = _FINALIZER_T(_finalize)
# Stores may outlive this module's globals at interpreter shutdown and then call
# the finalizer; leak one reference to each thunk so the code stays mapped.
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_TRAMPOLINE))
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_FINALIZER))


def define_unchecked(store: wasmtime.Store, ty: wasmtime.FuncType | Signature, fn: HostFn, *,
                     single_instance: bool = False) -> wasmtime.Func:
    """Create a host function in `store` that receives raw, type-decoded arguments.

    `ty` is a FuncType or, cheaper (no type queries), a :data:`Signature`.
    `fn(call, args)` gets i32/i64 as ints (i32 signed, as the guest sees it) and
    f32/f64 as floats; it returns None or one value matching `ty`'s result.  Any
    exception it raises becomes a trap carrying ``"TypeName: message"`` (just
    the message for :class:`GuestCallError`).

    `fn` is kept alive by a registry until `store` drops the function, so it
    must not hold `store` (e.g. through a :class:`RawFunc`; use
    :meth:`RawFunc.detached`): the store would never be freed.

    `single_instance=True` promises that only one instance in `store` imports
    the function, so the caller's memory export is looked up once and reused
    (and, in a store of a :func:`fixed_memory_engine`, its view too).
    """
    if not isinstance(store, wasmtime.Store):
        raise TypeError("expected a wasmtime.Store")
    if isinstance(ty, wasmtime.FuncType):
        params, results = _kinds(ty.params), _kinds(ty.results)
    elif isinstance(ty, tuple) and len(ty) == 2:
        params, results = tuple(ty[0]), tuple(ty[1])
    else:
        raise TypeError("expected a wasmtime.FuncType or a (params, results) signature")
    if not callable(fn):
        raise TypeError("expected a callable")
    sig = _sig(params, results)
    host = _Host(fn, sig, cache_memory=single_instance,
                 fixed=single_instance and store.engine in _FIXED_MEMORY_ENGINES)
    func_type = _func_type(store.engine, sig)
    ctx = store._context()  # raises for a closed store before anything is registered
    env = next(_ENV_IDS)
    _HOSTS[env] = host  # freed by _finalize when the store drops the function
    func = ffi.wasmtime_func_t()
    _func_new_unchecked(ctx, func_type.ptr(), _TRAMPOLINE, env, _FINALIZER, ctypes.byref(func))
    host.store_id = func.store_id
    return wasmtime.Func._from_raw(func)


# Engines made by fixed_memory_engine: their linear memories never move.
_FIXED_MEMORY_ENGINES: weakref.WeakSet[wasmtime.Engine] = weakref.WeakSet()


def fixed_memory_engine(config: wasmtime.Config) -> wasmtime.Engine:
    """An Engine of `config` with ``memory_may_move`` off: a linear memory keeps its base
    address for life (it grows in place within its reservation, 4 GiB by default on
    64-bit hosts: all of a 32-bit memory; growth past it fails instead of moving), so
    host functions keep a view of it across calls."""
    config.memory_may_move = False
    engine = wasmtime.Engine(config)
    _FIXED_MEMORY_ENGINES.add(engine)
    return engine


class _GuestCode:
    """How many threads are in guest code entered from the host: ``RawFunc.__call__`` and
    ``RawInstance`` are the only ways in (a host function calls back through
    ``HostCall.call``, inside one of them). The epoch tickers (``runtime.WasmRuntime``)
    tick only while this is not zero: an epoch deadline stops guest code, and with none
    running an idle daemon need not wake 100 times a second, nor take the GIL from the
    event loop's thread each time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._some = threading.Condition(self._lock)
        self._running = 0

    def enter(self) -> None:
        with self._lock:
            self._running += 1
            if self._running == 1:
                self._some.notify_all()

    def exit(self) -> None:
        with self._lock:
            self._running -= 1

    def wait(self, stopped: Callable[[], bool]) -> None:
        """Return once some thread is in guest code, or ``stopped()`` (see ``wake``)."""
        with self._lock:
            while not self._running and not stopped():
                self._some.wait()

    def wake(self) -> None:
        """Make every ``wait`` look at its ``stopped`` again."""
        with self._lock:
            self._some.notify_all()


GUEST_CODE: Final = _GuestCode()


def epoch_incrementer(engine: wasmtime.Engine) -> Callable[[], None]:
    """``engine.increment_epoch`` without releasing the GIL (an atomic add in libwasmtime).

    The caller keeps ``engine`` alive for as long as it uses the function.
    """
    ptr = ctypes.cast(engine.ptr(), c_void_p).value
    return lambda: _increment_epoch(ptr)


def set_epoch_deadline(store: wasmtime.Store, ticks: int) -> None:
    """``store.set_epoch_deadline(ticks)`` without releasing the GIL."""
    _set_epoch_deadline(store._context(), ticks)


# --- guest side ---------------------------------------------------------------


def _raise_call_error(error: int | None, trap: int, nested: bool) -> NoReturn:
    """Raise what a failed call or instantiation produced (taking ownership of it)."""
    exc: wasmtime.Trap | wasmtime.WasmtimeError
    if error:
        exc = wasmtime.WasmtimeError._from_ptr(
            ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t))
        )
    else:
        exc = wasmtime.Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(ffi.wasm_trap_t)))
    if nested:
        raise GuestTrap(exc)
    # As in wasmtime-py's enter_wasm(): if a high-level wasmtime.Func host
    # function raised inside this call, re-raise that Python exception.
    _wasmtime_func.maybe_raise_last_exn()
    raise exc


class RawFunc:
    """A guest export (or any Func) prepared for unchecked calls from Python.

    Must not be called while a host function of the same store is running; use
    :meth:`HostCall.call` there.
    """

    __slots__ = (
        "_args",
        "_buffer_type",
        "_func_addr",
        "_handle",
        "_kinds",
        "_nslots",
        "_result",
        "_store",
        "_store_id",
        "_trap_index",
    )

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        if not isinstance(store, wasmtime.Store):
            raise TypeError("expected a wasmtime.Store")
        if not isinstance(func, wasmtime.Func):
            raise TypeError("expected a wasmtime.Func")
        ty = func.type(store)
        sig = _sig(_kinds(ty.params), _kinds(ty.results))
        # Our own copy of the handle, so its address is stable for our lifetime.
        handle = ffi.wasmtime_func_t.from_buffer_copy(func._func)
        self._setup(store, handle, ctypes.addressof(handle), handle.store_id, sig)

    @classmethod
    def _from_handle(cls, store: wasmtime.Store | None, handle: ctypes.Structure, addr: int,
                     store_id: int, sig: _Sig) -> RawFunc:
        """`handle` owns the wasmtime_func_t at `addr`, whose type the caller knows is `sig`."""
        self = cls.__new__(cls)
        self._setup(store, handle, addr, store_id, sig)
        return self

    def _setup(self, store: wasmtime.Store | None, handle: ctypes.Structure, addr: int,
               store_id: int, sig: _Sig) -> None:
        self._store = store  # keeps the store (and so the function) alive
        self._handle = handle
        self._func_addr = addr
        self._store_id = store_id
        self._kinds = sig.params
        self._nslots = sig.nslots
        self._args = sig.args
        self._result = sig.result
        self._buffer_type = sig.buffer_type
        self._trap_index = sig.trap_index

    def detached(self) -> RawFunc:
        """This function without a reference to its store, callable only through
        :meth:`HostCall.call` (for host functions of that store to hold)."""
        copy = RawFunc.__new__(RawFunc)
        for name in RawFunc.__slots__:
            setattr(copy, name, getattr(self, name))
        copy._store = None
        return copy

    def __call__(self, *args: Number) -> Number | None:
        """Call the function; a trap raises wasmtime.Trap (or WasmtimeError, as Func would)."""
        store = self._store
        if store is None:
            raise RuntimeError("a detached RawFunc can only be called through HostCall.call")
        GUEST_CODE.enter()
        try:
            return self._invoke(store._context(), args, nested=False)
        finally:
            GUEST_CODE.exit()

    def _invoke(self, ctx: object, args: tuple[Number, ...], nested: bool) -> Number | None:
        if len(args) != len(self._kinds):
            raise TypeError(f"expected {len(self._kinds)} arguments, got {len(args)}")
        buf = self._buffer_type()
        if args:
            try:
                self._args.pack_into(buf, 0, *args)
            except struct.error:
                self._pack_normalized(buf, args)
        address = ctypes.addressof(buf)
        error: int | None = _func_call_unchecked(
            ctx, self._func_addr, address, self._nslots, address + _SLOT_BYTES * self._nslots
        )
        if error or buf[self._trap_index]:
            _raise_call_error(error, buf[self._trap_index], nested)
        if self._result is None:
            return None
        value: Number = self._result.unpack_from(buf)[0]
        return value

    def _pack_normalized(self, buf: ctypes.Array[c_uint64], args: tuple[Number, ...]) -> None:
        """Slow path: accept unsigned spellings of i32/i64 (e.g. 0xFFFFFFF0), or fail clearly."""
        values: list[Number] = []
        for kind, value in zip(self._kinds, args, strict=False):
            if kind in (_I32, _I64) and isinstance(value, int):
                bits = 32 if kind == _I32 else 64
                if (1 << (bits - 1)) <= value < (1 << bits):
                    value -= 1 << bits
            values.append(value)
        try:
            self._args.pack_into(buf, 0, *values)
        except struct.error as exc:
            raise TypeError(
                f"bad arguments {args!r} for ({', '.join(self._kinds)}): {exc}"
            ) from None


class RawMemory:
    """A guest's linear memory, accessed from Python outside host functions.

    Base and size are re-read on every access: any call into the guest may grow
    (and so move) the memory. Out-of-bounds access raises IndexError.
    """

    __slots__ = ("_extern", "_mem", "_store")

    def __init__(self, store: wasmtime.Store, extern: ffi.wasmtime_extern_t) -> None:
        self._store = store
        self._extern = extern  # owns the wasmtime_memory_t at _mem
        self._mem = ctypes.addressof(extern) + _EXTERN_PAYLOAD_OFFSET

    def size(self) -> int:
        """Current size in bytes."""
        size: int = _memory_data_size(self._store._context(), self._mem)
        return size

    def _checked_base(self, ptr: int, length: int) -> int:
        ctx = self._store._context()
        size = _memory_data_size(ctx, self._mem)
        if ptr < 0 or length < 0 or ptr + length > size:
            raise IndexError(f"out of bounds: ptr={ptr} len={length} memory={size}")
        base: int = _memory_data(ctx, self._mem) or 0
        return base

    def read(self, ptr: int, length: int) -> bytes:
        """Copy `length` bytes at guest address `ptr`."""
        base = self._checked_base(ptr, length)
        return ctypes.string_at(base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` to guest address `ptr`."""
        if not isinstance(data, bytes):
            data = bytes(data)
        base = self._checked_base(ptr, len(data))
        if data:
            _memmove(base + ptr, data, len(data))

    def view(self, ptr: int, length: int) -> memoryview:
        """A writable view of `length` bytes at guest address `ptr`, for filling in place
        (e.g. ``os.preadv``). Valid only until the next call into the guest (which may
        grow and so move the memory); never keep it longer."""
        base = self._checked_base(ptr, length)
        return memoryview((c_char * length).from_address(base + ptr)).cast("B")


class RawInstance:
    """`module` instantiated in `store` with `imports`; exports are fetched by name.

    Export types come from the module (read once per Module object), so wrapping
    an export costs one lookup and no type queries.  Instantiation failures raise
    wasmtime.Trap or wasmtime.WasmtimeError, as wasmtime.Instance would.
    """

    __slots__ = ("_exports", "_instance", "_store")

    def __init__(self, store: wasmtime.Store, module: wasmtime.Module,
                 imports: Sequence[wasmtime.Func]) -> None:
        if not isinstance(store, wasmtime.Store):
            raise TypeError("expected a wasmtime.Store")
        if not isinstance(module, wasmtime.Module):
            raise TypeError("expected a wasmtime.Module")
        externs = (ffi.wasmtime_extern_t * len(imports))()
        for extern, func in zip(externs, imports, strict=True):
            if not isinstance(func, wasmtime.Func):
                raise TypeError("RawInstance imports must be wasmtime.Func objects")
            extern.kind = _EXTERN_FUNC
            extern.of.func = func._func
        self._exports = _module_exports(module)
        self._store = store
        self._instance = ffi.wasmtime_instance_t()
        trap = c_void_p()
        GUEST_CODE.enter()  # a start function is guest code
        try:
            error: int | None = _instance_new(store._context(), module.ptr(), externs,
                                              len(imports), ctypes.byref(self._instance),
                                              ctypes.byref(trap))
        finally:
            GUEST_CODE.exit()
        if error or trap.value:
            _raise_call_error(error, trap.value or 0, nested=False)

    def _export(self, name: str, kind: int) -> ffi.wasmtime_extern_t:
        extern = ffi.wasmtime_extern_t()
        raw = name.encode()
        found = _instance_export_get(self._store._context(), ctypes.addressof(self._instance),
                                     raw, len(raw), ctypes.addressof(extern))
        if not found:
            raise KeyError(name)
        # ctypes yields an int for this c_uint8 field; the bindings annotate it as c_uint8.
        if cast(int, extern.kind) != kind:
            ffi.wasmtime_extern_delete(ctypes.byref(extern))  # e.g. a shared memory's reference
            what = "function" if kind == _EXTERN_FUNC else "memory"
            raise TypeError(f"export {name!r} is not a {what}")
        return extern

    def func(self, name: str) -> RawFunc:
        """Export `name` as a RawFunc; KeyError if missing, TypeError if not a function,
        ValueError if its type is not one fastpath can carry."""
        kinds = self._exports.get(name)
        if kinds is None:
            raise KeyError(name)
        if not isinstance(kinds, tuple):
            raise TypeError(f"export {name!r} is not a function")
        sig = _sig(*kinds)
        extern = self._export(name, _EXTERN_FUNC)
        # An export of an instance lives in the instance's store.
        return RawFunc._from_handle(self._store, extern,
                                    ctypes.addressof(extern) + _EXTERN_PAYLOAD_OFFSET,
                                    self._instance.store_id, sig)

    def memory(self, name: str = "memory") -> RawMemory:
        """Export `name` as a RawMemory; KeyError if missing, TypeError if not a linear memory."""
        kind = self._exports.get(name)
        if kind is None:
            raise KeyError(name)
        if kind != _MEMORY_EXPORT:
            raise TypeError(f"export {name!r} is not a memory")
        return RawMemory(self._store, self._export(name, _EXTERN_MEMORY))
