"""The ABI host functions (import module ``spacedrive``, v1 and v2), one set per guest instance.

Every pointer and length from the guest is bounds-checked by ``HostCall``; a bad
one raises ``GuestCallError``, which fastpath turns into a trap that fails the
call (and so the job) with that message. Oversized arguments are refused the
same way, never truncated. Nothing here raises into ctypes.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import msgspec
import wasmtime

from daemon import errors
from daemon.calls import Caller, DispatchFn, ReadIntoFn
from daemon.config import ExtensionLimits
from daemon.extensions.fastpath import GuestCallError, HostCall, RawFunc, define_unchecked
from daemon.extensions.runtime import ABI_IMPORTS, ABI_MODULE, WasmRuntime
from daemon.extensions.stats import TIME_MASK, ExtensionStats, Tally
from daemon.jobs.context import ContextRegistry, JobContext
from daemon.locations.fs import OpenFiles

log = logging.getLogger("sd.extensions")

MAX_METHOD_BYTES = 256
UNKNOWN_METHOD = "(unknown method)"  # how calls of names no operation has are counted
STATS_MERGE_S = 1.0  # a running job's tally reaches its extension's stats this often
MAX_JOB_NAME_BYTES = 128
_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_enc = msgspec.json.Encoder()
_U32 = struct.Struct("<I")
_json_check = msgspec.json.Decoder()
# 16 bytes of a UUID's text (hex digits and hyphens): a guest that passed the string.
_UUID_TEXT = re.compile(rb"[0-9a-fA-F-]{16}")


@dataclass(frozen=True)
class RegisteredJob:
    name: str
    export: str
    resumable: bool


class LogLimiter:
    """At most ``per_second`` guest log lines a second per extension; the rest are counted."""

    def __init__(self, per_second: int = 200) -> None:
        self.per_second = per_second
        self._window = 0
        self._count = 0
        self.suppressed = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(may log now, lines suppressed in the previous window to report)."""
        now = int(time.monotonic())
        with self._lock:
            report = 0
            if now != self._window:
                self._window, self._count = now, 0
                report, self.suppressed = self.suppressed, 0
            self._count += 1
            if self._count > self.per_second:
                self.suppressed += 1
                return False, report
            return True, report


@dataclass(eq=False)
class HostEnv:
    """What the host functions of one instance know: who calls, and for which job."""

    extension_id: str
    caller: Caller
    dispatch: DispatchFn
    contexts: ContextRegistry
    limits: ExtensionLimits
    log_limiter: LogLimiter
    deadline_ticks: int
    # Set when the extension is unloaded: its still-running guests lose their rights.
    revoked: threading.Event
    phase: str = "init"  # "init" | "job" | "cleanup"
    job_id: str | None = None
    registered: list[RegisteredJob] = field(default_factory=list)
    alloc: RawFunc | None = None
    # The last error-level line the guest logged: its own reason when a call into it
    # fails (JobResult::failed, the SDK's parse errors, a panic message before its trap).
    last_error: str | None = None
    read_into: ReadIntoFn | None = None
    # Files entry_read opened for this job instance (closed when its job returns).
    open_files: OpenFiles = field(default_factory=OpenFiles)
    # Accounting (daemon/extensions/stats.py): this instance's tally, merged into
    # ``stats``. ``account`` False skips it (only the bench's A/B of its cost does).
    stats: ExtensionStats | None = None
    tally: Tally = field(default_factory=Tally)
    account: bool = True
    cpu_mark: float = 0.0  # thread CPU time at the last merge (the guest's thread)
    # The runtime whose ticker advances the engine's epoch (counted in ``epoch``), and
    # its count when a host function last set this instance's deadline.
    epochs: WasmRuntime | None = None
    deadline_epoch: int = -1

    def merge_stats(self, *, peak_memory: int = 0, outcome: str | None = None) -> None:
        """Fold the tally into the extension's stats. On the guest's thread."""
        if self.stats is None:
            return
        cpu = time.thread_time()
        guest_cpu = cpu - self.cpu_mark - self.tally.host_s
        self.cpu_mark = cpu
        self.stats.merge(self.tally, guest_cpu_s=guest_cpu, peak_memory=peak_memory,
                         outcome=outcome)

    def job_context(self, hc: HostCall, ptr: int) -> JobContext:
        """The live context of the job this instance runs, if ``ptr`` names it."""
        raw = hc.read(ptr, 16)
        job_id = str(uuid.UUID(bytes=raw))
        if self.phase != "job" or job_id != self.job_id:
            hint = ""
            if _UUID_TEXT.fullmatch(raw):
                hint = (f" (the 16 bytes at {ptr} are the text {raw.decode()!r}: job ids are "
                        f"16 raw bytes, not text; parse ctx's \"job_id\" string into its bytes)")
            raise GuestCallError(
                f"job id {job_id} is not a job of extension {self.extension_id} "
                f"running in this instance{hint}")
        ctx = self.contexts.get(job_id)
        if ctx is None or ctx.extension_id != self.extension_id:
            raise GuestCallError(f"job {job_id} is not running")
        return ctx


def _text(hc: HostCall, ptr: int, length: int, limit: int, what: str) -> str:
    if length < 0 or length > limit:
        raise GuestCallError(f"{what} of {length} bytes exceeds the limit of {limit} bytes")
    try:
        return hc.read(ptr, length).decode("utf-8")
    except UnicodeDecodeError as e:
        raise GuestCallError(f"{what} is not valid UTF-8: {e}") from None


_LIBRARY_IDS: dict[bytes, str] = {}


def _library_id(raw: bytes) -> str:
    """The text form of a 16-byte library UUID (remembered: guests send the same few)."""
    text = _LIBRARY_IDS.get(raw)
    if text is None:
        text = str(uuid.UUID(bytes=raw))
        if len(_LIBRARY_IDS) < 1024:
            _LIBRARY_IDS[raw] = text
    return text


def make_host_functions(env: HostEnv) -> dict[str, Callable[[HostCall, tuple[Any, ...]], Any]]:
    """The Python side of every ABI import, closed over one instance's env."""
    limits = env.limits
    glog = logging.getLogger(f"sd.ext.{env.extension_id}")

    def reply(hc: HostCall, body: bytes) -> int:
        """``body`` in memory the guest allocated, after its length (u32 LE)."""
        if env.alloc is None:
            raise GuestCallError("guest memory allocator is not ready")
        n = len(body)
        ptr = hc.call(env.alloc, 4 + n)
        if not isinstance(ptr, int) or ptr == 0:
            return 0
        try:
            hc.write(ptr, _U32.pack(n) + body)
        except GuestCallError:
            raise GuestCallError(
                f"spacedrive_call could not write its reply: the guest's wasm_alloc({4 + n}) "
                f"returned {ptr}, but [{ptr}, {ptr + 4 + n}) is outside its memory of "
                f"{hc.memory_size} bytes") from None
        return ptr

    def error_body(err: errors.SdError) -> bytes:
        return _enc.encode({"error": errors.error_body(err)})

    tally = env.tally
    calls, errs = tally.calls, tally.errors  # cleared in place at each merge

    def count_error(code: int) -> None:
        if env.account:
            errs[code] = errs.get(code, 0) + 1

    # Fixed for the instance's life; looked up once (this is the guests' hot path).
    dispatch, caller, revoked = env.dispatch, env.caller, env.revoked
    max_payload, max_reply = limits.max_payload_bytes, limits.max_reply_bytes

    def spacedrive_call(hc: HostCall, a: tuple[Any, ...]) -> int:
        method_ptr, method_len, lib_ptr, payload_ptr, payload_len = a
        method = _text(hc, method_ptr, method_len, MAX_METHOD_BYTES, "method name")
        account = env.account
        t0 = 0.0
        # The first call of each operation, then one in TIME_ONE_IN, is timed.
        if account and not calls.get(method, 0) & TIME_MASK:
            t0 = perf_counter()
        # Counted once, as the call ends (a trap too): by its name; a name no operation
        # has under UNKNOWN_METHOD (a guest's made-up names are not kept); a payload
        # refused as too large not at all.
        counted: str | None = method
        try:
            library_id = None if lib_ptr == 0 else _library_id(hc.read(lib_ptr, 16))
            if payload_len < 0:
                raise GuestCallError(f"negative payload length {payload_len}")
            if payload_len > max_payload:
                count_error(errors.TooLarge.code)
                counted = None
                return reply(hc, error_body(errors.TooLarge(
                    f"payload of {payload_len} bytes exceeds the limit of {max_payload}")))
            payload = hc.read(payload_ptr, payload_len)
            if revoked.is_set():
                raise GuestCallError(f"extension {env.extension_id} was unloaded")
            try:
                body = _enc.encode({"ok": dispatch(method, library_id, payload, caller)})
            except errors.SdError as e:
                count_error(e.code)
                if e.code == errors.MethodNotFound.code:
                    counted = UNKNOWN_METHOD
                body = error_body(e)
            except Exception as e:
                log.exception("extension %s: %s failed", env.extension_id, method)
                count_error(errors.InternalError.code)
                body = error_body(errors.InternalError(f"internal error: {type(e).__name__}: {e}"))
            hc_deadline(hc)  # time spent in the host is not the guest's
            if len(body) > max_reply:
                count_error(errors.TooLarge.code)
                body = error_body(errors.TooLarge(
                    f"reply of {len(body)} bytes exceeds the limit of {max_reply}"))
            if t0:
                tally.timed_s += perf_counter() - t0
                tally.timed_calls += 1
            return reply(hc, body)
        finally:
            if account and counted is not None:
                calls[counted] = calls.get(counted, 0) + 1

    def spacedrive_log(hc: HostCall, a: tuple[Any, ...]) -> None:
        level, ptr, length = a
        text = _text(hc, ptr, length, limits.max_log_bytes, "log message")
        if level == 3:
            env.last_error = text  # kept even when the line itself is rate limited
        ok, suppressed = env.log_limiter.allow()
        if ok:
            tally.log_lines += 1
        else:
            tally.log_suppressed += 1
        if suppressed:
            glog.warning("[%s] %d log lines suppressed (rate limit)", env.extension_id, suppressed)
        if ok:
            glog.log(_LEVELS[level] if 0 <= level < 4 else logging.INFO, "[%s] %s",
                     env.extension_id, text)

    def register_job(hc: HostCall, a: tuple[Any, ...]) -> int:
        name_ptr, name_len, export_ptr, export_len, resumable = a
        if env.phase != "init":
            raise GuestCallError("register_job may only be called during plugin_init")
        name = _text(hc, name_ptr, name_len, MAX_JOB_NAME_BYTES, "job name")
        export = _text(hc, export_ptr, export_len, MAX_JOB_NAME_BYTES, "export name")
        if not name or any(j.name == name for j in env.registered):
            return 1
        env.registered.append(RegisteredJob(name, export, bool(resumable)))
        return 0

    def job_report_progress(hc: HostCall, a: tuple[Any, ...]) -> None:
        job_ptr, progress, msg_ptr, msg_len = a
        ctx = env.job_context(hc, job_ptr)
        ctx.report_progress(progress, _text(hc, msg_ptr, msg_len, limits.max_log_bytes,
                                            "progress message"))

    def job_checkpoint(hc: HostCall, a: tuple[Any, ...]) -> int:
        job_ptr, state_ptr, state_len = a
        ctx = env.job_context(hc, job_ptr)
        if state_len < 0 or state_len > limits.max_checkpoint_bytes:
            ctx.add_warning(f"checkpoint of {state_len} bytes refused: the limit is "
                            f"{limits.max_checkpoint_bytes} bytes")
            return 2
        state = hc.read(state_ptr, state_len)
        try:
            _json_check.decode(state)
        except msgspec.DecodeError:
            ctx.add_warning("checkpoint refused: the state is not valid JSON")
            return 3
        try:
            ctx.checkpoint_raw(state)
        except (errors.DiskFull, errors.LibraryUnavailable):
            # Not saved; the context has asked the job to pause (ABI.md, job_checkpoint).
            hc_deadline(hc)
            return 4
        hc_deadline(hc)  # waiting for the database is not the guest's time
        return 0

    def job_check_interrupt(hc: HostCall, a: tuple[Any, ...]) -> int:
        ctx = env.job_context(hc, a[0])
        if env.revoked.is_set():
            raise GuestCallError(f"extension {env.extension_id} was unloaded")
        hc_deadline(hc)  # a job that checks in regularly may run as long as it likes
        if time.monotonic() - tally.merged_at >= STATS_MERGE_S:
            env.merge_stats()  # a long job's figures show while it runs
        return int(ctx.check_interrupt())

    def job_add_warning(hc: HostCall, a: tuple[Any, ...]) -> None:
        job_ptr, msg_ptr, msg_len = a
        env.job_context(hc, job_ptr).add_warning(
            _text(hc, msg_ptr, msg_len, limits.max_log_bytes, "warning"))

    def job_increment_items(hc: HostCall, a: tuple[Any, ...]) -> None:
        if a[1] < 0:
            raise GuestCallError(f"negative item count {a[1]}")
        env.job_context(hc, a[0]).increment_items(a[1])

    def job_increment_bytes(hc: HostCall, a: tuple[Any, ...]) -> None:
        if a[1] < 0:
            raise GuestCallError(f"negative byte count {a[1]}")
        env.job_context(hc, a[0]).increment_bytes(a[1])

    def entry_read(hc: HostCall, a: tuple[Any, ...]) -> int:
        # ABI v2: file bytes straight into guest memory; returns bytes read or an error code.
        lib_ptr, entry_id, offset, buf_ptr, buf_len = a
        if buf_len < 0:
            raise GuestCallError(f"negative buffer length {buf_len}")
        hc.view(buf_ptr, buf_len)  # bounds first: a bad buffer traps whatever else is wrong
        if lib_ptr == 0:
            return errors.LibraryRequired.code
        library_id = _library_id(hc.read(lib_ptr, 16))
        if env.revoked.is_set():
            raise GuestCallError(f"extension {env.extension_id} was unloaded")
        if env.read_into is None:
            return errors.InternalError.code
        try:
            n = env.read_into(library_id, entry_id, offset, hc.view(buf_ptr, buf_len), env.caller,
                              env.open_files if env.phase == "job" else None)
        except errors.SdError as e:
            log.debug("extension %s: entry_read %s: %s", env.extension_id, entry_id, e.message)
            n = e.code
        except Exception:
            log.exception("extension %s: entry_read failed", env.extension_id)
            n = errors.InternalError.code
        hc_deadline(hc)
        return n

    def hc_deadline(hc: HostCall) -> None:
        # The deadline is "deadline_ticks after now": while the runtime's ticker has not
        # ticked since it was last set here, setting it again changes it by at most one
        # tick (earlier, never later), so that call is skipped.
        epochs = env.epochs
        if epochs is None:
            hc.set_epoch_deadline(env.deadline_ticks)
            return
        now = epochs.epoch
        if now != env.deadline_epoch:
            hc.set_epoch_deadline(env.deadline_ticks)
            env.deadline_epoch = now

    fns: dict[str, Callable[[HostCall, tuple[Any, ...]], Any]] = {
        "spacedrive_call": spacedrive_call,
        "spacedrive_log": spacedrive_log,
        "register_job": register_job,
        "job_report_progress": job_report_progress,
        "job_checkpoint": job_checkpoint,
        "job_check_interrupt": job_check_interrupt,
        "job_add_warning": job_add_warning,
        "job_increment_items": job_increment_items,
        "job_increment_bytes": job_increment_bytes,
        "entry_read": entry_read,
    }
    assert set(fns) == set(ABI_IMPORTS)
    return fns


# Import names per Module, in import order (module.imports asks libwasmtime every time).
_IMPORT_NAMES: weakref.WeakKeyDictionary[wasmtime.Module, tuple[str, ...]]
_IMPORT_NAMES = weakref.WeakKeyDictionary()


def _import_names(module: wasmtime.Module) -> tuple[str, ...]:
    names = _IMPORT_NAMES.get(module)
    if names is None:
        found = []
        for imp in module.imports:
            assert imp.module == ABI_MODULE and imp.name is not None
            found.append(imp.name)
        names = _IMPORT_NAMES[module] = tuple(found)
    return names


def build_imports(store: wasmtime.Store, module: wasmtime.Module,
                  env: HostEnv) -> list[wasmtime.Func]:
    """One Func per import of ``module`` (already checked against the ABI), in order."""
    fns = make_host_functions(env)
    # GuestInstance puts exactly one instance in each store.
    return [define_unchecked(store, ABI_IMPORTS[name], fns[name], single_instance=True)
            for name in _import_names(module)]
