"""Extension manifests (``manifest.json``): parsed strictly, validated at the edge."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Literal

import msgspec

from daemon.errors import ExtensionError

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MAX_MANIFEST_BYTES = 64 * 1024


class RateLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    requests_per_minute: int = 600
    concurrent_jobs: int = 1


class Permissions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Operation-name prefixes the extension may call, e.g. "query:test.".
    methods: list[str] = []
    # "*" for every library, or a list of library ids.
    libraries: Literal["*"] | list[str] = []
    rate_limits: RateLimits = RateLimits()
    max_memory_mb: int = 64


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: str
    name: str
    version: str
    description: str
    author: str
    wasm_file: str
    permissions: Permissions = Permissions()

    def validate(self) -> None:
        if len(self.id) > 64 or not ID_RE.match(self.id):
            raise ExtensionError(f"manifest id {self.id!r} must match [a-z0-9][a-z0-9-]* (at most 64)")
        wasm = Path(self.wasm_file)
        if wasm.is_absolute() or ".." in wasm.parts or not self.wasm_file or wasm.name != self.wasm_file:
            raise ExtensionError(
                f"wasm_file {self.wasm_file!r} must be a plain file name inside the extension directory")
        if not self.wasm_file.endswith(".wasm"):
            raise ExtensionError(f"wasm_file {self.wasm_file!r} must end in .wasm")
        p = self.permissions
        if p.max_memory_mb < 1:
            raise ExtensionError("permissions.max_memory_mb must be at least 1")
        if p.rate_limits.requests_per_minute < 0 or p.rate_limits.concurrent_jobs < 1:
            raise ExtensionError("permissions.rate_limits must be positive")
        for m in p.methods:
            if not m.startswith(("query:", "action:")):
                raise ExtensionError(f"permission {m!r} must start with 'query:' or 'action:'")
        if isinstance(p.libraries, list):
            for lib in p.libraries:
                try:
                    uuid.UUID(lib)
                except ValueError:
                    raise ExtensionError(f"permissions.libraries entry {lib!r} is not a library id") from None


def read_manifest(directory: Path) -> Manifest:
    """Parse and validate ``directory/manifest.json``; checks the module stays inside."""
    path = directory / "manifest.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExtensionError(f"no manifest.json in {directory}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ExtensionError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.DecodeError as e:
        raise ExtensionError(f"invalid manifest {path}: {e}") from None
    manifest.validate()
    wasm = directory / manifest.wasm_file
    root = directory.resolve()
    if wasm.is_symlink() or not wasm.resolve().is_relative_to(root):
        raise ExtensionError(f"wasm_file {manifest.wasm_file!r} leaves the extension directory")
    if not wasm.is_file():
        raise ExtensionError(f"wasm_file {manifest.wasm_file!r} not found in {directory}")
    return manifest
