"""Build WAT guests into installable extension directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wasmtime

GUESTS = Path(__file__).parent / "guests"

# A bump allocator over one page at 1024; enough for the small tests.
PRELUDE = """
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "wasm_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "wasm_free") (param i32 i32))
  (func (export "plugin_cleanup") (result i32) (i32.const 0))
"""

IMPORTS = {
    "call": '(import "spacedrive" "spacedrive_call" (func $call (param i32 i32 i32 i32 i32) (result i32)))',
    "log": '(import "spacedrive" "spacedrive_log" (func $log (param i32 i32 i32)))',
    "register": '(import "spacedrive" "register_job" (func $register (param i32 i32 i32 i32 i32) (result i32)))',
    "checkpoint": '(import "spacedrive" "job_checkpoint" (func $checkpoint (param i32 i32 i32) (result i32)))',
    "interrupt": '(import "spacedrive" "job_check_interrupt" (func $interrupt (param i32) (result i32)))',
    "items": '(import "spacedrive" "job_increment_items" (func $items (param i32 i64)))',
    "progress": '(import "spacedrive" "job_report_progress" (func $progress (param i32 f32 i32 i32)))',
}


def module(body: str, imports: tuple[str, ...] = (), prelude: bool = True) -> str:
    """A guest module: the named (or raw, written out) imports, the prelude, then ``body``."""
    return "(module\n" + "\n".join(IMPORTS.get(i, i) for i in imports) + (PRELUDE if prelude else "") + body + "\n)"


def make_extension(dest: Path, ext_id: str, wat: str, permissions: dict[str, Any] | None = None,
                   **manifest: Any) -> Path:
    """Write ``dest/<ext_id>/{manifest.json, <ext_id>.wasm}`` and return that directory."""
    d = dest / ext_id
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{ext_id}.wasm").write_bytes(wasmtime.wat2wasm(wat))
    m = {"id": ext_id, "name": ext_id, "version": "0.0.1", "description": "test guest",
         "author": "tests", "wasm_file": f"{ext_id}.wasm",
         "permissions": permissions or {"methods": ["query:test."], "libraries": "*",
                                        "rate_limits": {"requests_per_minute": 60000,
                                                        "concurrent_jobs": 4},
                                        "max_memory_mb": 16}}
    m.update(manifest)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def data(offset: int, text: str) -> str:
    """A data segment holding ``text`` (UTF-8) at ``offset``."""
    esc = "".join(f"\\{b:02x}" for b in text.encode())
    return f'(data (i32.const {offset}) "{esc}")'


def _parts() -> dict[str, str]:
    parts: dict[str, str] = {}
    name = None
    for line in (GUESTS / "parts.wat").read_text().splitlines():
        if line.startswith(";; @part "):
            name = line.split()[-1]
            parts[name] = ""
        elif line.startswith(";; @end"):
            name = None
        elif name is not None:
            parts[name] += line + "\n"
    return parts


def hostile(name: str, **subs: object) -> str:
    """The WAT text of ``guests/hostile/<name>.wat`` with its includes and ``{KEY}`` values filled."""
    parts = _parts()
    out = []
    for line in (GUESTS / "hostile" / f"{name}.wat").read_text().splitlines():
        if line.startswith(";; @include "):
            out.append(parts[line.split()[-1]])
        else:
            out.append(line)
    text = "\n".join(out)
    for key, value in subs.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def wat_bytes(raw: bytes) -> str:
    """Bytes as a WAT string literal body."""
    return "".join(f"\\{b:02x}" for b in raw)
