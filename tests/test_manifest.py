"""manifest.json: every rule of guest-sdk/ABI.md §9, accepted and refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Daemon
from wasm_guests import make_extension, module

from daemon.config import ExtensionLimits
from daemon.errors import ExtensionError
from daemon.extensions.manifest import Manifest, read_manifest
from daemon.extensions.policy import ExtensionPolicy

MINIMAL = {"id": "ok", "name": "Ok", "version": "1.0.0", "description": "", "author": "",
           "wasm_file": "ok.wasm"}


def write(tmp: Path, manifest: dict[str, Any] | bytes) -> Path:
    d = tmp / "ext"
    d.mkdir(exist_ok=True)
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (d / "manifest.json").write_bytes(raw)
    (d / "ok.wasm").write_bytes(b"\0asm\1\0\0\0")
    return d


def test_minimal_manifest_and_defaults(tmp_path: Path) -> None:
    m = read_manifest(write(tmp_path, MINIMAL))
    p = m.permissions
    assert (p.methods, p.libraries, p.max_memory_mb) == ([], [], 64)
    assert (p.rate_limits.requests_per_minute, p.rate_limits.concurrent_jobs) == (600, 1)


@pytest.mark.parametrize("version", ["0.0.1", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-beta.2",
                                     "1.0.0-x-y.7.z", "1.0.0+20130313", "1.0.0-rc.1+build.5"])
def test_versions_accepted(tmp_path: Path, version: str) -> None:
    assert read_manifest(write(tmp_path, {**MINIMAL, "version": version})).version == version


@pytest.mark.parametrize("change,message", [
    ({"id": "Bad_Id"}, "manifest id 'Bad_Id' must match"),
    ({"id": "-x"}, "must match [a-z0-9][a-z0-9-]*"),
    ({"id": "x\n"}, "must match"),
    ({"id": "a" * 65}, "at most 64"),
    ({"name": " "}, "manifest name must not be empty"),
    ({"name": "n" * 129}, "manifest name is longer than 128"),
    ({"name": "a\x1bb"}, "manifest name contains the control character"),
    ({"version": "1.0"}, "version '1.0' must be a semantic version"),
    ({"version": "v1.0.0"}, "must be a semantic version"),
    ({"version": "01.0.0"}, "must be a semantic version"),
    ({"version": "1.0.0-01"}, "must be a semantic version"),
    ({"version": "1.0.0\n"}, "must be a semantic version"),
    ({"description": "d" * 1025}, "manifest description is longer than 1024"),
    ({"description": "bell\x07"}, "manifest description contains the control character"),
    ({"author": "a" * 257}, "manifest author is longer than 256"),
    ({"wasm_file": "/etc/x.wasm"}, "must be a plain file name"),
    ({"wasm_file": "../x.wasm"}, "must be a plain file name"),
    ({"wasm_file": "sub/x.wasm"}, "must be a plain file name"),
    ({"wasm_file": ".hidden.wasm"}, "not starting with '.'"),
    ({"wasm_file": ""}, "must be a plain file name"),
    ({"wasm_file": "ok.wat"}, "must end in .wasm"),
    ({"wasm_file": "missing.wasm"}, "wasm_file 'missing.wasm' not found"),
    ({"permissions": {"methods": ["files."]}}, "must start with 'query:' or 'action:'"),
    ({"permissions": {"methods": ["query:a b"]}}, "without spaces or control characters"),
    ({"permissions": {"methods": ["query:" + "x" * 251]}}, "at most 256 bytes"),
    ({"permissions": {"methods": ["query:"] * 257}}, "more than 256 entries"),
    ({"permissions": {"libraries": "all"}}, "Invalid manifest"),
    ({"permissions": {"libraries": ["not-a-uuid"]}}, "is not a library id"),
    ({"permissions": {"max_memory_mb": 0}}, "max_memory_mb must be at least 1"),
    ({"permissions": {"max_memory_mb": "64"}}, "Expected `int`, got `str`"),
    ({"permissions": {"rate_limits": {"requests_per_minute": 0}}}, "requests_per_minute must be at least 1"),
    ({"permissions": {"rate_limits": {"concurrent_jobs": 0}}}, "concurrent_jobs must be at least 1"),
    ({"permissions": {"rate_limits": {"burst": 5}}}, "unknown field `burst`"),
    ({"permissions": {"network": True}}, "unknown field `network`"),
    ({"homepage": "x"}, "unknown field `homepage`"),
])
def test_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ExtensionError) as exc:
        read_manifest(write(tmp_path, {**MINIMAL, **change}))
    assert message.lower() in exc.value.message.lower()


@pytest.mark.parametrize("field", ["id", "name", "version", "description", "author", "wasm_file"])
def test_required_fields(tmp_path: Path, field: str) -> None:
    m = dict(MINIMAL)
    del m[field]
    with pytest.raises(ExtensionError, match=f"missing required field `{field}`"):
        read_manifest(write(tmp_path, m))


def test_refused_files(tmp_path: Path) -> None:
    with pytest.raises(ExtensionError, match="no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(ExtensionError, match="larger than 65536 bytes"):
        read_manifest(write(tmp_path, b" " * 65537))
    with pytest.raises(ExtensionError, match="invalid manifest"):
        read_manifest(write(tmp_path, b"{not json"))


def test_library_ids_compare_in_any_spelling() -> None:
    lib = uuid.uuid4()
    m = msgspec.json.decode(json.dumps({**MINIMAL, "permissions": {"libraries": [lib.hex.upper()]}}),
                            type=Manifest)
    m.validate()
    policy = ExtensionPolicy(m, ExtensionLimits())
    assert policy.allows_library(str(lib)) and not policy.allows_library(str(uuid.uuid4()))


def test_memory_larger_than_allowed_is_refused_at_install(daemon: Daemon, tmpdir_short: Path) -> None:
    wat = module('(func (export "plugin_init") (result i32) (i32.const 0))', prelude=False)
    wat = wat.replace("(module", """(module
      (memory (export "memory") 80)
      (func (export "wasm_alloc") (param i32) (result i32) (i32.const 0))
      (func (export "wasm_free") (param i32 i32))
      (func (export "plugin_cleanup") (result i32) (i32.const 0))""", 1)
    src = make_extension(tmpdir_short / "src", "big-memory", wat,
                         {"libraries": "*", "max_memory_mb": 4})
    r = daemon.sd("ext", "install", str(src))
    assert r.returncode == 1
    assert ("the module's memory starts at 80 pages (5120 KiB), more than the 4 MiB it may use "
            "(permissions.max_memory_mb") in r.stderr
    assert daemon.sd_json("ext", "list") == []  # nothing was copied
