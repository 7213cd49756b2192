"""Extension manifests (``manifest.json``): parsed strictly, validated at the edge."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec

from daemon.errors import ExtensionError

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Semantic Versioning 2.0.0 (semver.org), e.g. 1.2.3, 0.1.0-beta.2, 1.0.0+build.5.
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
VERSION_RE = re.compile(
    rf"^{_NUM}\.{_NUM}\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_MANIFEST_BYTES = 64 * 1024
MAX_ID = 64
MAX_NAME = 128
MAX_VERSION = 64
MAX_DESCRIPTION = 1024
MAX_AUTHOR = 256
MAX_WASM_FILE = 255
MAX_METHODS = 256
MAX_METHOD = 256  # the longest operation name spacedrive_call takes
MAX_LIBRARIES = 1024


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


TriggerKind = Literal["entries.created", "entries.modified", "entries.moved", "entries.removed"]
MAX_TRIGGERS = 16


class Trigger(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Dispatch ``job`` with the entry ids of ``on`` events (``daemon.extensions.triggers``)."""

    on: TriggerKind
    job: str
    debounce_ms: int = 1000
    # Merged into the job's state, beside "trigger" and "entry_ids".
    state: dict[str, Any] = msgspec.field(default_factory=dict)
    max_entries: int = 10_000  # entry ids per job; the rest go to the next one


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: str
    name: str
    version: str
    description: str
    author: str
    wasm_file: str
    permissions: Permissions = Permissions()
    triggers: list[Trigger] = []

    def validate(self) -> None:
        """The rules of guest-sdk/ABI.md §9; the first one broken is the error."""
        if len(self.id) > MAX_ID or not ID_RE.fullmatch(self.id):
            raise ExtensionError(
                f"manifest id {self.id!r} must match [a-z0-9][a-z0-9-]* (at most {MAX_ID})")
        _text("name", self.name, MAX_NAME, empty=False)
        if len(self.version) > MAX_VERSION or not VERSION_RE.fullmatch(self.version):
            raise ExtensionError(
                f"version {self.version!r} must be a semantic version such as 1.0.0 or "
                f"0.2.0-beta.1 (at most {MAX_VERSION} characters)")
        _text("description", self.description, MAX_DESCRIPTION, empty=True, newlines=True)
        _text("author", self.author, MAX_AUTHOR, empty=True)
        wasm = Path(self.wasm_file)
        if (not self.wasm_file or wasm.is_absolute() or ".." in wasm.parts
                or wasm.name != self.wasm_file or self.wasm_file.startswith(".")
                or len(self.wasm_file.encode()) > MAX_WASM_FILE or _CONTROL.search(self.wasm_file)):
            raise ExtensionError(
                f"wasm_file {self.wasm_file!r} must be a plain file name inside the extension "
                f"directory (no '/', not starting with '.', at most {MAX_WASM_FILE} bytes)")
        if not self.wasm_file.endswith(".wasm"):
            raise ExtensionError(f"wasm_file {self.wasm_file!r} must end in .wasm")
        if len(self.triggers) > MAX_TRIGGERS:
            raise ExtensionError(f"at most {MAX_TRIGGERS} triggers")
        for t in self.triggers:
            if not t.job:
                raise ExtensionError("a trigger needs a job name")
            if not 0 <= t.debounce_ms <= 3_600_000:
                raise ExtensionError("trigger debounce_ms must be between 0 and 3600000")
            if not 1 <= t.max_entries <= 100_000:
                raise ExtensionError("trigger max_entries must be between 1 and 100000")
            if {"trigger", "entry_ids"} & set(t.state):
                raise ExtensionError("trigger state may not set 'trigger' or 'entry_ids'")
        p = self.permissions
        if p.max_memory_mb < 1:
            raise ExtensionError("permissions.max_memory_mb must be at least 1")
        if p.rate_limits.requests_per_minute < 1:
            raise ExtensionError("permissions.rate_limits.requests_per_minute must be at least 1")
        if p.rate_limits.concurrent_jobs < 1:
            raise ExtensionError("permissions.rate_limits.concurrent_jobs must be at least 1")
        if len(p.methods) > MAX_METHODS:
            raise ExtensionError(f"permissions.methods has more than {MAX_METHODS} entries")
        for m in p.methods:
            if not m.startswith(("query:", "action:")):
                raise ExtensionError(f"permission {m!r} must start with 'query:' or 'action:'")
            if len(m.encode()) > MAX_METHOD or _CONTROL.search(m) or " " in m:
                raise ExtensionError(
                    f"permission {m!r} must be an operation name or prefix of at most "
                    f"{MAX_METHOD} bytes, without spaces or control characters")
        if isinstance(p.libraries, list):
            if len(p.libraries) > MAX_LIBRARIES:
                raise ExtensionError(f"permissions.libraries has more than {MAX_LIBRARIES} entries")
            for lib in p.libraries:
                try:
                    uuid.UUID(lib)
                except ValueError:
                    raise ExtensionError(f"permissions.libraries entry {lib!r} is not a library id") from None


def _text(field: str, value: str, limit: int, *, empty: bool, newlines: bool = False) -> None:
    if not empty and not value.strip():
        raise ExtensionError(f"manifest {field} must not be empty")
    if len(value) > limit:
        raise ExtensionError(f"manifest {field} is longer than {limit} characters")
    bad = _CONTROL.search(value.replace("\n", "").replace("\t", "") if newlines else value)
    if bad:
        raise ExtensionError(f"manifest {field} contains the control character {bad.group()!r}")


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
