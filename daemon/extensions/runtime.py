"""The wasmtime engine shared by every extension, its epoch ticker, and the module cache.

Compiled modules are cached on disk under ``<plugin-dir>/.cache/`` keyed by the
module's SHA-256, the wasmtime version and the engine settings, so a second load
of the same module skips Cranelift. Deserializing compiled code trusts its bytes
(a damaged entry can crash the process), so every entry carries a BLAKE3 of all
of its artifact's bytes and is deserialized only after that hash matches; an
entry that does not match is logged, removed and rebuilt. The cache directory is
private to the daemon (0700).

A module of 64 KiB or more is compiled in a short-lived child process
(``python -m daemon.extensions.runtime OUT < module.wasm``): Cranelift keeps
the memory it used, and the daemon should not carry that for its whole life
(measured: +27 MiB resident after compiling the two bundled extensions
in-process, +0 this way). The child uses the same engine settings, so its
artifact loads like any cache entry.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import blake3
import wasmtime

from daemon.errors import ExtensionError
from daemon.extensions.fastpath import GUEST_CODE, epoch_incrementer, fixed_memory_engine

log = logging.getLogger("sd.extensions")

I32, I64, F32 = "i32", "i64", "f32"

# Every import a guest may declare (module "spacedrive"): ABI v1's nine, then the additions
# of later versions (ABI_SINCE). guest-sdk/ABI.md §8 has the versioning rule.
ABI_IMPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "spacedrive_call": ((I32, I32, I32, I32, I32), (I32,)),
    "spacedrive_log": ((I32, I32, I32), ()),
    "register_job": ((I32, I32, I32, I32, I32), (I32,)),
    "job_report_progress": ((I32, F32, I32, I32), ()),
    "job_checkpoint": ((I32, I32, I32), (I32,)),
    "job_check_interrupt": ((I32,), (I32,)),
    "job_add_warning": ((I32, I32, I32), ()),
    "job_increment_items": ((I32, I64), ()),
    "job_increment_bytes": ((I32, I64), ()),
    "entry_read": ((I32, I64, I64, I32, I32), (I64,)),
}
ABI_SINCE: dict[str, int] = {"entry_read": 2}
ABI_VERSION = 2
"""The newest ABI version this host implements; it implements every older one too."""
ABI_SECTION = "spacedrive_abi"
"""Custom section declaring the ABI version a module needs: each byte is a version."""
ABI_MODULE = "spacedrive"
# Exports every guest must have, with their signatures (None: a memory).
REQUIRED_EXPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None] = {
    "memory": None,
    "wasm_alloc": ((I32,), (I32,)),
    "wasm_free": ((I32, I32), ()),
    "plugin_init": ((), (I32,)),
    "plugin_cleanup": ((), (I32,)),
}
JOB_EXPORT_SIG = ((I32, I32, I32, I32), (I32,))


def func_sig(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


CHILD_COMPILE_MIN_BYTES = 64 * 1024
_INVALID_MODULE_EXIT = 3
WASM_MAGIC = b"\0asm"
# A cache entry: this magic, the BLAKE3 of the artifact, then the artifact.
_ENTRY_MAGIC = b"sd-cwasm-blake3\n"
_DIGEST_LEN = 32


def encode_entry(artifact: bytes | bytearray) -> bytes:
    return _ENTRY_MAGIC + blake3.blake3(artifact).digest() + bytes(artifact)


def verified_artifact(entry: bytes) -> bytes | None:
    """The artifact of a cache entry whose every byte checks out, else None."""
    head = len(_ENTRY_MAGIC) + _DIGEST_LEN
    if len(entry) <= head or not entry.startswith(_ENTRY_MAGIC):
        return None
    artifact = entry[head:]
    if not hmac.compare_digest(blake3.blake3(artifact).digest(), entry[len(_ENTRY_MAGIC):head]):
        return None
    return artifact


def module_sha256(wasm: bytes) -> str:
    """The hex SHA-256 of a module's bytes: its cache key and the hash `sd ext info` shows."""
    return hashlib.sha256(wasm).hexdigest()


def check_wasm_magic(wasm: bytes, name: str) -> None:
    if not wasm.startswith(WASM_MAGIC):
        raise ExtensionError(
            f"{name} is not a WebAssembly module (it does not start with the \\0asm magic "
            f"bytes; it starts with {wasm[:4].hex(' ') or 'nothing: it is empty'})")


def engine_config() -> wasmtime.Config:
    """The engine settings; the daemon and the compiling child must agree on them."""
    config = wasmtime.Config()
    config.strategy = "cranelift"
    config.cranelift_opt_level = "speed"
    config.epoch_interruption = True
    # Memories grow in place, never move: host functions keep their view (fastpath).
    config.memory_may_move = False
    return config


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled module, with the SHA-256 of its bytes (its cache key, computed once)."""

    module: wasmtime.Module
    sha256: str
    from_cache: bool


class WasmRuntime:
    """One engine (Cranelift, epoch interruption) and the compiled-module cache."""

    def __init__(self, cache_dir: Path, epoch_tick_ms: int) -> None:
        self.engine = fixed_memory_engine(engine_config())
        self.tick_s = epoch_tick_ms / 1000.0
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._version = metadata.version("wasmtime")
        self._stopped = False
        # Ticks so far, counted after the engine's (so it lags the engine's epoch by at
        # most one): host functions compare it to skip re-setting an unchanged deadline.
        self.epoch = 0
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        # Guests are stopped when the epoch passes their deadline; see Store.set_epoch_deadline.
        # Only while some thread runs guest code (no deadline to reach otherwise). The
        # thread takes the GIL once a tick (after its sleep): Event.wait and wasmtime-py's
        # increment_epoch (which releases the GIL around the call) took it three times, and
        # each time the event loop's thread, busy serving the socket, has to wait for it.
        increment = epoch_incrementer(self.engine)
        while not self._stopped:
            GUEST_CODE.wait(lambda: self._stopped)
            time.sleep(self.tick_s)
            increment()
            self.epoch += 1

    def ticks(self, ms: int) -> int:
        return max(1, int(ms / 1000.0 / self.tick_s))

    def close(self) -> None:
        self._stopped = True  # the ticker ends within a tick
        GUEST_CODE.wake()

    def compile(self, wasm: bytes, name: str = "the module",
                sha256: str | None = None) -> Compiled:
        """The compiled module, whether it came from the cache, and its SHA-256 (``sha256``
        if the caller has it already: it must be ``module_sha256(wasm)``). Blocking."""
        check_wasm_magic(wasm, name)
        t0 = time.perf_counter()
        compiled = self._compile(wasm, sha256 or module_sha256(wasm))
        log.debug("module %s (%s) %s in %.1f ms", compiled.sha256[:16], name,
                  "taken from the cache" if compiled.from_cache else "compiled",
                  (time.perf_counter() - t0) * 1000)
        return compiled

    def _compile(self, wasm: bytes, key: str) -> Compiled:
        path = self.cache_dir / f"{key}-wasmtime{self._version}-epoch-fixedmem.cwasm"
        if path.exists():
            module = self._from_cache(path)
            if module is not None:
                return Compiled(module, key, True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        if len(wasm) >= CHILD_COMPILE_MIN_BYTES:
            try:
                return Compiled(self._compile_in_child(wasm, tmp, path), key, False)
            except ExtensionError:
                raise
            except Exception as e:  # noqa: BLE001 - the in-process compiler still works
                log.warning("compiling in a child process failed (%s); compiling here", e)
                tmp.unlink(missing_ok=True)
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise ExtensionError(f"not a valid WebAssembly module: {_first_line(e)}") from None
        try:
            tmp.write_bytes(encode_entry(module.serialize()))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write module cache %s: %s", path, e)
            tmp.unlink(missing_ok=True)
        return Compiled(module, key, False)

    def _from_cache(self, path: Path) -> wasmtime.Module | None:
        """A verified cache entry, deserialized; None (entry removed) if it is damaged."""
        try:
            artifact = verified_artifact(path.read_bytes())
        except OSError as e:
            log.warning("cannot read module cache entry %s: %s; rebuilding it", path, e)
            artifact = None
        else:
            if artifact is None:
                log.warning("module cache entry %s is damaged (BLAKE3 mismatch or not an sd "
                            "cache entry); rebuilding it", path)
        if artifact is not None:
            try:
                return wasmtime.Module.deserialize(self.engine, artifact)
            except Exception as e:  # noqa: BLE001 - e.g. another wasmtime build's artifact
                log.warning("ignoring unusable cache entry %s: %s; rebuilding it", path.name, e)
        path.unlink(missing_ok=True)
        return None

    def _compile_in_child(self, wasm: bytes, tmp: Path, path: Path) -> wasmtime.Module:
        proc = subprocess.run([sys.executable, "-m", "daemon.extensions.runtime", str(tmp)],
                              input=wasm, capture_output=True, timeout=300, check=False)
        if proc.returncode == _INVALID_MODULE_EXIT:
            raise ExtensionError("not a valid WebAssembly module: "
                                 + proc.stderr.decode(errors="replace").strip())
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
        # The child wrote this just now, but it is checked like any other entry.
        artifact = verified_artifact(tmp.read_bytes())
        if artifact is None:
            raise RuntimeError("the compiling child wrote a damaged artifact")
        module = wasmtime.Module.deserialize(self.engine, artifact)
        os.replace(tmp, path)
        return module


def declared_abi_version(wasm: bytes) -> int:
    """The largest version in the module's ``spacedrive_abi`` custom sections; 1 without any.

    Only the section headers are walked (the linker may have concatenated several
    such sections: one byte per declaration)."""
    def leb(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= len(wasm) or shift > 28:
                raise ExtensionError("not a valid WebAssembly module: bad section header")
            byte = wasm[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    if wasm[:4] != b"\0asm":
        raise ExtensionError("not a valid WebAssembly module")
    version, pos = 1, 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, body = leb(pos + 1)
        end = body + size
        if section_id == 0:
            name_len, name_at = leb(body)
            if wasm[name_at:name_at + name_len] == ABI_SECTION.encode():
                payload = wasm[name_at + name_len:end]
                if not payload:
                    raise ExtensionError(f"custom section {ABI_SECTION} is empty")
                version = max(version, *payload)
        pos = end
    return version


def check_module_abi(module: wasmtime.Module, wasm: bytes | None = None) -> int:
    """Refuse a module needing a newer ABI than ours, imports outside it, and missing or
    mistyped required exports, by name. Returns the ABI version the module needs."""
    needed = declared_abi_version(wasm) if wasm is not None else 1
    if needed > ABI_VERSION:
        raise ExtensionError(
            f"module needs ABI version {needed} (custom section {ABI_SECTION}); this sd "
            f"implements versions 1 to {ABI_VERSION}: upgrade sd to load it")
    for imp in module.imports:
        name = f"{imp.module}.{imp.name}"
        ty = imp.type
        if imp.module != ABI_MODULE or imp.name not in ABI_IMPORTS:
            raise ExtensionError(f"module imports {name}, which is not part of ABI v{ABI_VERSION}")
        needed = max(needed, ABI_SINCE.get(imp.name, 1))
        if not isinstance(ty, wasmtime.FuncType) or func_sig(ty) != ABI_IMPORTS[imp.name or ""]:
            raise ExtensionError(f"module imports {name} with the wrong signature")
    exports = {e.name: e.type for e in module.exports}
    for name, sig in REQUIRED_EXPORTS.items():
        export = exports.get(name)
        if export is None:
            raise ExtensionError(f"module does not export {name!r} (required by ABI v1)")
        if sig is None:
            if not isinstance(export, wasmtime.MemoryType):
                raise ExtensionError(f"export {name!r} must be a memory")
        elif not isinstance(export, wasmtime.FuncType) or func_sig(export) != sig:
            raise ExtensionError(f"export {name!r} has the wrong signature")
    return needed


def check_module_memory(module: wasmtime.Module, limit_bytes: int) -> None:
    """Refuse a module whose memory starts larger than it may ever be (max_memory_mb)."""
    for e in module.exports:
        if e.name == "memory" and isinstance(e.type, wasmtime.MemoryType):
            pages = e.type.limits.min
            if pages * 65536 > limit_bytes:
                raise ExtensionError(
                    f"the module's memory starts at {pages} pages ({pages * 64} KiB), more than "
                    f"the {limit_bytes // (1024 * 1024)} MiB it may use (permissions.max_memory_mb, "
                    f"capped by the daemon's extension_limits.max_memory_mb)")


def job_export_ok(module: wasmtime.Module, name: str) -> bool:
    for e in module.exports:
        if e.name == name:
            return isinstance(e.type, wasmtime.FuncType) and func_sig(e.type) == JOB_EXPORT_SIG
    return False


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__



def _child_main(out: str) -> int:
    """Compile the module on stdin and write its artifact to ``out``."""
    try:
        module = wasmtime.Module(wasmtime.Engine(engine_config()), sys.stdin.buffer.read())
    except wasmtime.WasmtimeError as e:
        print(_first_line(e), file=sys.stderr)
        return _INVALID_MODULE_EXIT
    Path(out).write_bytes(encode_entry(module.serialize()))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
