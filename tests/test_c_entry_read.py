"""ABI v2 in the C SDK (guest-sdk/c/spacedrive.h): ``sd_job_read`` (``entry_read``) and
``SD_DECLARE_ABI`` (the ``spacedrive_abi`` custom section), in the real daemon.

tests/guests/c/reader is test-extension's ``read_file`` job in C, built by
scripts/build-extensions.sh as every C extension is; tests/guests/c/abi_probe.c is
built here with ``zig cc`` and the same flags, declaring a different version each time.
test_entry_read.py tests the host side with the Rust SDK and WAT.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from conftest import ROOT, Daemon
from fstree import write
from test_entry_read import fnv

from daemon.extensions.runtime import declared_abi_version

GUESTS = ROOT / "tests" / "guests" / "c"
C_COUNTER = ROOT / "build" / "extensions" / "c-counter" / "c_counter.wasm"
ZIG_CACHE = str(ROOT / "build" / "zig-cache")


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built")
    r = subprocess.run([str(ROOT / "scripts" / "build-extensions.sh"), "-q", "--out", str(out),
                        str(GUESTS / "reader")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out / "c-reader"


def imports(wasm: bytes) -> list[str]:
    return [str(i.name) for i in wasmtime.Module(wasmtime.Engine(), wasm).imports]


def with_methods(src: Path, dest: Path, ext_id: str, methods: list[str]) -> Path:
    shutil.copytree(src, dest / ext_id)
    m = json.loads((dest / ext_id / "manifest.json").read_text())
    m["id"], m["permissions"]["methods"] = ext_id, methods
    (dest / ext_id / "manifest.json").write_text(json.dumps(m))
    return dest / ext_id


def run(d: Daemon, lib: str, ext: str, job: str, state: dict[str, Any]) -> dict[str, Any]:
    """The job's info once it ended (`sd job run --wait`); the exit code is 0 or 4 (failed)."""
    r = d.sd("--json", "job", "run", ext, job, "--state", json.dumps(state), "--wait",
             "--library", lib, timeout=60)
    assert r.returncode in (0, 4), r.stdout + r.stderr
    info: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return info


def read(d: Daemon, lib: str, ext: str, state: dict[str, Any]) -> dict[str, Any]:
    info = run(d, lib, ext, "read_file", state)
    assert info["status"] == "completed", info
    return info["output"]  # type: ignore[no-any-return]


def test_reader_declares_v2_and_imports_entry_read(reader: Path) -> None:
    wasm = (reader / "c_reader.wasm").read_bytes()
    assert declared_abi_version(wasm) == 2 and "entry_read" in imports(wasm)
    # A v1 module rebuilt with the v2 header stays v1: no section, no entry_read import.
    counter = C_COUNTER.read_bytes()
    assert declared_abi_version(counter) == 1 and "entry_read" not in imports(counter)


def test_c_entry_read_bytes_ranges_errors_and_grant(daemon: Daemon, tmpdir_short: Path,
                                                    reader: Path) -> None:
    d = daemon
    data = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
    tree = tmpdir_short / "tree"
    write(tree / "big.bin", data)
    write(tree / "dir" / "inner.txt", b"inner bytes")
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("location", "add", str(tree), "--no-watch", "--wait", check=True)
    ents = {e["path"]: e for e in d.sd_json("entries", "ls", "--limit", "0")}
    r = d.sd("ext", "install", str(reader))
    assert r.returncode == 0 and "c-reader 0.1.0: loaded; jobs: read_file, bad_buffer" in r.stdout, \
        r.stdout + r.stderr
    big = ents["big.bin"]["id"]

    # The whole file through an odd-sized buffer: exactly its bytes.
    out = read(d, lib, "c-reader", {"entry_id": big, "buffer": 65_543, "checksum": True})
    assert out == {"bytes": len(data), "calls": len(data) // 65_543 + 2, "fnv": fnv(data),
                   "error": None, "error_message": None}
    # One range in the middle: the bytes at that offset.
    out = read(d, lib, "c-reader", {"entry_id": big, "offset": 1_000_003, "buffer": 4096,
                                    "max_calls": 1, "checksum": True})
    assert (out["bytes"], out["fnv"]) == (4096, fnv(data[1_000_003:1_000_003 + 4096]))
    # A range running past the end stops at it; one starting past it reads nothing.
    out = read(d, lib, "c-reader", {"entry_id": big, "offset": len(data) - 5, "checksum": True})
    assert (out["bytes"], out["calls"], out["fnv"], out["error"]) == (5, 2, fnv(data[-5:]), None)
    out = read(d, lib, "c-reader", {"entry_id": big, "offset": len(data) + 10})
    assert (out["bytes"], out["calls"], out["error"]) == (0, 1, None)
    # An offset above INT64_MAX never reaches the host; the SDK answers -32602 itself.
    out = read(d, lib, "c-reader", {"entry_id": big, "offset": 2**63})
    assert (out["error"], out["error_message"]) == (-32602, "invalid offset")
    # Not a file; no such entry; a file gone since indexing.
    out = read(d, lib, "c-reader", {"entry_id": ents["dir"]["id"]})
    assert (out["error"], out["bytes"]) == (-32007, 0)
    out = read(d, lib, "c-reader", {"entry_id": 999_999})
    assert (out["error"], out["error_message"]) == (-32006, "no such entry, or its file is gone")
    (tree / "dir" / "inner.txt").unlink()
    out = read(d, lib, "c-reader", {"entry_id": ents["dir/inner.txt"]["id"]})
    assert out["error"] == -32006

    # Without the exact grant (a prefix is not one) every read is refused.
    src = tmpdir_short / "src"
    d.sd("ext", "install", str(with_methods(reader, src, "c-prefix", ["query:entries."])), check=True)
    out = read(d, lib, "c-prefix", {"entry_id": big})
    assert out["error"] == -32003 and "exact name" in out["error_message"]
    d.sd("ext", "install", str(with_methods(reader, src, "c-nogrant", [])), check=True)
    assert read(d, lib, "c-nogrant", {"entry_id": big})["error"] == -32003
    assert d.sd_json("status")


@pytest.mark.parametrize(("ptr", "length", "message"), [
    (2**31 - 16, 64, "out of bounds"),     # far past the module's memory
    (-8, 16, "out of bounds"),             # a negative pointer
    (1024, -5, "negative buffer length"),
])
def test_c_entry_read_bad_buffer_fails_the_job(daemon: Daemon, tmpdir_short: Path, reader: Path,
                                               ptr: int, length: int, message: str) -> None:
    d = daemon
    write(tmpdir_short / "tree" / "f", b"some bytes")
    lib = d.sd_json("library", "create", "L")["id"]
    d.sd("location", "add", str(tmpdir_short / "tree"), "--no-watch", "--wait", check=True)
    entry = next(e for e in d.sd_json("entries", "ls", "--limit", "0") if e["path"] == "f")
    d.sd("ext", "install", str(reader), check=True)
    info = run(d, lib, "c-reader", "bad_buffer", {"entry_id": entry["id"], "ptr": ptr, "len": length})
    assert info["status"] == "failed" and message in info["error"], info
    assert "entry_read returned" not in d.log()  # the trap stopped the guest in the call
    out = read(d, lib, "c-reader", {"entry_id": entry["id"], "checksum": True})  # still serving
    assert (out["bytes"], out["fnv"]) == (10, fnv(b"some bytes"))


def build_probe(dest: Path, *defines: str) -> Path:
    """abi_probe.c as an extension directory, compiled as build-extensions.sh compiles C."""
    ext = dest / "abi-probe"
    ext.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-freestanding",
                        "-nostdlib", "-ffreestanding", "-Os", "-Wall", "-Wextra", "-Werror",
                        *(f"-D{x}" for x in defines), "-I", str(ROOT / "guest-sdk" / "c"),
                        "-Wl,--no-entry", "-o", str(ext / "abi_probe.wasm"),
                        str(GUESTS / "abi_probe.c")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": ZIG_CACHE,
                            "ZIG_LOCAL_CACHE_DIR": ZIG_CACHE})
    assert r.returncode == 0, r.stderr
    (ext / "manifest.json").write_text(json.dumps({
        "id": "abi-probe", "name": "ABI probe", "version": "0.1.0", "description": "",
        "author": "", "wasm_file": "abi_probe.wasm",
        "permissions": {"methods": ["query:entries.read.v1"], "libraries": "*"}}))
    return ext


@pytest.mark.parametrize(("defines", "declared", "reads"), [
    ((), 1, False),                               # v1: neither section nor import
    (("PROBE_READ",), 1, True),                   # no section; importing entry_read implies 2
    (("PROBE_ABI=2",), 2, False),                 # declared without using anything of v2
    (("PROBE_ABI=1", "PROBE_ABI2=2", "PROBE_READ"), 2, True),  # two declarations: the largest
    (("PROBE_ABI=SD_ABI_VERSION", "PROBE_READ"), 2, True),
    (("PROBE_ABI=3",), 3, False),                 # newer than this sd: refused before it runs
    (("PROBE_ABI=255", "PROBE_ABI2=1"), 255, False),
])
def test_c_module_declares_the_abi_version(daemon: Daemon, tmpdir_short: Path,
                                           defines: tuple[str, ...], declared: int,
                                           reads: bool) -> None:
    src = build_probe(tmpdir_short / "src", *defines)
    wasm = (src / "abi_probe.wasm").read_bytes()
    assert declared_abi_version(wasm) == declared
    assert ("entry_read" in imports(wasm)) == reads
    r = daemon.sd("ext", "install", str(src))
    if declared > 2:
        assert r.returncode != 0
        assert (f"module needs ABI version {declared} (custom section spacedrive_abi); this sd "
                "implements versions 1 to 2: upgrade sd to load it") in r.stderr
        assert daemon.sd_json("ext", "list") == []
        return
    assert r.returncode == 0, r.stderr
    assert daemon.sd_json("ext", "info", "abi-probe")["state"] == "loaded"
    if reads:  # the import works: a read of an entry that does not exist is refused, not trapped
        lib = daemon.sd_json("library", "create", "L")["id"]
        info = run(daemon, lib, "abi-probe", "probe", {})
        assert info["status"] == "failed" and "read refused" in info["error"], info
    else:
        info = run(daemon, daemon.sd_json("library", "create", "L")["id"], "abi-probe", "probe", {})
        assert info["status"] == "completed" and info["output"] == {"probed": True}, info


def test_sd_declare_abi_rejects_an_out_of_range_version(tmpdir_short: Path) -> None:
    for bad in ("0", "256"):
        with pytest.raises(AssertionError, match="SD_DECLARE_ABI: 1 to 255"):
            build_probe(tmpdir_short / bad, f"PROBE_ABI={bad}")
