"""WAT guests for the bench, compiled with ``wasmtime.wat2wasm``, and extension packaging.

Every guest loop sends the same ping (``common.PING_PAYLOAD``) and checks each
reply, returning how many were bad, so a fast path that answers errors shows up
as a failure rather than a good figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wasmtime

from bench.common import PING, PING_PAYLOAD


def _bytes(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


# ABI v1 exports with a LIFO bump allocator: a block freed right after use (as the
# loops do with every reply) is reused, so a long loop runs in constant memory.
ABI_PRELUDE = """
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 8192))
  (func $alloc (export "wasm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump)
      (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then (global.set $bump (local.get $p)) (return (i32.const 0))))))
    (local.get $p))
  (func $free (export "wasm_free") (param $p i32) (param $n i32)
    (if (i32.eq (global.get $bump) (i32.add (local.get $p)
          (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
      (then (global.set $bump (local.get $p)))))
  (func (export "plugin_cleanup") (result i32) (i32.const 0))
"""

_METHOD_AT, _PAYLOAD_AT = 16, 128


def spacedrive_call_loop() -> str:
    """An ABI v1 extension whose export ``bench_loop(n)`` calls ``spacedrive_call`` ping n times.

    Each reply is checked to start with ``{"ok"`` and freed with ``wasm_free``,
    as the SDK does.
    """
    return f"""(module
  (import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))
  {ABI_PRELUDE}
  (func (export "plugin_init") (result i32) (i32.const 0))
  (data (i32.const {_METHOD_AT}) "{_bytes(PING.encode())}")
  (data (i32.const {_PAYLOAD_AT}) "{_bytes(PING_PAYLOAD)}")
  (func (export "bench_loop") (param $n i32) (result i32)
    (local $i i32) (local $r i32) (local $bad i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $r (call $call (i32.const {_METHOD_AT}) (i32.const {len(PING)}) (i32.const 0)
                               (i32.const {_PAYLOAD_AT}) (i32.const {len(PING_PAYLOAD)})))
      (if (i32.eqz (local.get $r))
        (then (local.set $bad (i32.add (local.get $bad) (i32.const 1))))
        (else
          ;; the reply at r+4 is {{"ok":... : its third byte is 'o'
          (if (i32.ne (i32.load8_u offset=6 (local.get $r)) (i32.const 0x6f))
            (then (local.set $bad (i32.add (local.get $bad) (i32.const 1)))))
          (call $free (local.get $r) (i32.add (i32.const 4) (i32.load (local.get $r))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $bad)))
"""


def spacedrive_call_job() -> str:
    """An ABI v1 extension registering job ``ping_loop``: it reads n (decimal digits, the
    job's state JSON) and calls ``spacedrive_call`` ping n times, as ``bench_loop`` does.

    Returns 0 when every reply was good, else 2 (the job fails and the bench says so).
    """
    name, export = b"ping_loop", b"execute_ping_loop"
    return f"""(module
  (import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  {ABI_PRELUDE}
  (data (i32.const {_METHOD_AT}) "{_bytes(PING.encode())}")
  (data (i32.const {_PAYLOAD_AT}) "{_bytes(PING_PAYLOAD)}")
  (data (i32.const 256) "{_bytes(name)}")
  (data (i32.const 288) "{_bytes(export)}")
  (func (export "plugin_init") (result i32)
    (call $register (i32.const 256) (i32.const {len(name)}) (i32.const 288)
                    (i32.const {len(export)}) (i32.const 0)))
  (func (export "execute_ping_loop") (param $cp i32) (param $cl i32) (param $sp i32)
        (param $sl i32) (result i32)
    (local $n i32) (local $i i32) (local $r i32) (local $bad i32) (local $c i32)
    (block $parsed (loop $digit
      (br_if $parsed (i32.ge_u (local.get $i) (local.get $sl)))
      (local.set $c (i32.sub (i32.load8_u (i32.add (local.get $sp) (local.get $i)))
                             (i32.const 48)))
      (br_if $parsed (i32.gt_u (local.get $c) (i32.const 9)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $c)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $digit)))
    (local.set $i (i32.const 0))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $r (call $call (i32.const {_METHOD_AT}) (i32.const {len(PING)}) (i32.const 0)
                               (i32.const {_PAYLOAD_AT}) (i32.const {len(PING_PAYLOAD)})))
      (if (i32.eqz (local.get $r))
        (then (local.set $bad (i32.add (local.get $bad) (i32.const 1))))
        (else
          (if (i32.ne (i32.load8_u offset=6 (local.get $r)) (i32.const 0x6f))
            (then (local.set $bad (i32.add (local.get $bad) (i32.const 1)))))
          (call $free (local.get $r) (i32.add (i32.const 4) (i32.load (local.get $r))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (if (result i32) (local.get $bad) (then (i32.const 2)) (else (i32.const 0)))))
"""


def bare_read_loop() -> str:
    """A guest calling import ``bench.read(ptr, len) -> i32`` on the ping payload n times."""
    return f"""(module
  (import "bench" "read" (func $read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const {_PAYLOAD_AT}) "{_bytes(PING_PAYLOAD)}")
  (func (export "run") (param $n i32) (result i32)
    (local $i i32) (local $bad i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $bad (i32.add (local.get $bad)
        (call $read (i32.const {_PAYLOAD_AT}) (i32.const {len(PING_PAYLOAD)}))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $bad)))
"""


def extism_ping_loop() -> str:
    """An Extism guest: export ``run`` reads n (u64 input) and calls host ``ping`` n times.

    Per call it does what an Extism PDK does: allocate a block in Extism memory
    and store the JSON input into it, call the host function with the block's
    offset, copy the JSON output block back (``length`` + ``load_u64``/``load_u8``),
    check it starts with ``{"e``, and free both blocks. Kernel functions come
    from ``extism:host/env``; the host function from ``extism:host/user``.
    """
    stores = "\n        ".join(
        f"(call $store_u64 (i64.add (local.get $in) (i64.const {j})) "
        f"(i64.load (i32.const {_PAYLOAD_AT + j})))" for j in range(0, len(PING_PAYLOAD), 8))
    return f"""(module
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/user" "ping" (func $ping (param i64) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const {_PAYLOAD_AT}) "{_bytes(PING_PAYLOAD)}")
  (func (export "run") (result i32)
    (local $n i64) (local $i i64) (local $in i64) (local $out i64) (local $len i64)
    (local $j i64) (local $bad i32)
    (local.set $n (call $input_load_u64 (i64.const 0)))
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
      (local.set $in (call $alloc (i64.const {len(PING_PAYLOAD)})))
        {stores}
      (local.set $out (call $ping (local.get $in)))
      (local.set $len (call $length (local.get $out)))
      (local.set $j (i64.const 0))
      (block $w8 (loop $l8
        (br_if $w8 (i64.gt_u (i64.add (local.get $j) (i64.const 8)) (local.get $len)))
        (i64.store (i32.add (i32.const 1024) (i32.wrap_i64 (local.get $j)))
                   (call $load_u64 (i64.add (local.get $out) (local.get $j))))
        (local.set $j (i64.add (local.get $j) (i64.const 8)))
        (br $l8)))
      (block $w1 (loop $l1
        (br_if $w1 (i64.ge_u (local.get $j) (local.get $len)))
        (i32.store8 (i32.add (i32.const 1024) (i32.wrap_i64 (local.get $j)))
                    (call $load_u8 (i64.add (local.get $out) (local.get $j))))
        (local.set $j (i64.add (local.get $j) (i64.const 1)))
        (br $l1)))
      ;; the output {{"echo":... : its third byte is 'e'
      (if (i32.ne (i32.load8_u (i32.const 1026)) (i32.const 0x65))
        (then (local.set $bad (i32.add (local.get $bad) (i32.const 1)))))
      (call $free (local.get $in))
      (call $free (local.get $out))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    (local.get $bad)))
"""


def trivial_job() -> str:
    """An ABI v1 extension registering job ``noop`` whose export returns 0 at once."""
    name, export = b"noop", b"execute_noop"
    return f"""(module
  (import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))
  {ABI_PRELUDE}
  (data (i32.const 16) "{_bytes(name)}")
  (data (i32.const 32) "{_bytes(export)}")
  (func (export "plugin_init") (result i32)
    (call $register (i32.const 16) (i32.const {len(name)}) (i32.const 32) (i32.const {len(export)})
                    (i32.const 0)))
  (func (export "execute_noop") (param i32 i32 i32 i32) (result i32) (i32.const 0)))
"""


def big_module(count: int) -> str:
    """A valid ABI v1 extension padded with ``count`` distinct functions.

    Each filler function does a little arithmetic on its own constants so that
    Cranelift has real code to compile (not one body repeated), and all are
    reachable through an exported dispatcher table.
    """
    body = """(local $x i32) (local.set $x (local.get 0))
    (local.set $x (i32.add (i32.mul (local.get $x) (i32.const {a})) (i32.const {b})))
    (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const {c}))))
    (if (i32.gt_u (local.get $x) (i32.const {d}))
      (then (local.set $x (i32.sub (local.get $x) (i32.const {b})))))
    (local.set $x (i32.add (i32.rotl (local.get $x) (i32.const {c})) (i32.const {a})))
    (local.set $x (i32.mul (local.get $x) (i32.or (local.get $x) (i32.const 1))))
    (local.get $x)"""
    funcs = []
    for i in range(count):
        a, b, c, d = 2654435761 % (i + 7919) + 3, i * 31 + 17, i % 29 + 1, (i * 7777) % 100_000
        funcs.append(f"  (func $f{i} (param i32) (result i32) "
                     + body.format(a=a, b=b, c=c, d=d) + ")")
    table = " ".join(f"$f{i}" for i in range(count))
    return f"""(module
  {ABI_PRELUDE}
  (func (export "plugin_init") (result i32) (i32.const 0))
  (type $filler (func (param i32) (result i32)))
  (table {count} funcref)
  (elem (i32.const 0) {table})
  (func (export "run_filler") (param $i i32) (param $x i32) (result i32)
    (call_indirect (type $filler) (local.get $x) (local.get $i)))
{chr(10).join(funcs)})
"""


def big_wasm(target_bytes: int) -> bytes:
    """``big_module`` sized to within a few percent of ``target_bytes`` of wasm."""
    probe = 1000
    per_func = (len(compile_wat(big_module(2 * probe))) - len(compile_wat(big_module(probe)))) / probe
    base = len(compile_wat(big_module(probe))) - per_func * probe
    return compile_wat(big_module(max(1, round((target_bytes - base) / per_func))))


def compile_wat(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def make_extension(dest: Path, ext_id: str, wasm: bytes, *, rate_per_minute: int,
                   concurrent_jobs: int = 8, methods: list[str] | None = None) -> Path:
    """Write ``dest/<ext_id>/{manifest.json, <ext_id>.wasm}``; returns that directory."""
    d = dest / ext_id
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{ext_id}.wasm").write_bytes(wasm)
    manifest: dict[str, Any] = {
        "id": ext_id, "name": ext_id, "version": "0.0.1", "description": "bench guest",
        "author": "bench", "wasm_file": f"{ext_id}.wasm",
        "permissions": {"methods": methods if methods is not None else ["query:test."],
                        "libraries": "*",
                        "rate_limits": {"requests_per_minute": rate_per_minute,
                                        "concurrent_jobs": concurrent_jobs},
                        "max_memory_mb": 16}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d
