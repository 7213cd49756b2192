"""guest-sdk/c/spacedrive.h in wasm: the allocator, the JSON reader and writer, UUIDs, printf.

tests/guests/c/sdk_probe.c is built with zig cc (as scripts/build-extensions.sh builds
C extensions) and called through wasmtime directly. The JSON reader must accept exactly
what Python's json accepts (without NaN/Infinity), and the writer's output must decode
to the same value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import wasmtime
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROBE = ROOT / "tests" / "guests" / "c" / "sdk_probe.c"
ENGINE = wasmtime.Engine()


@pytest.fixture(scope="module")
def probe_wasm(tmp_path_factory: pytest.TempPathFactory) -> wasmtime.Module:
    out = tmp_path_factory.mktemp("probe") / "probe.wasm"
    cache = str(ROOT / "build" / "zig-cache")
    r = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-freestanding",
                        "-nostdlib", "-ffreestanding", "-Os", "-Wall", "-Wextra", "-Werror",
                        "-I", str(ROOT / "guest-sdk" / "c"), "-Wl,--no-entry", "-o", str(out),
                        str(PROBE)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": cache, "ZIG_LOCAL_CACHE_DIR": cache})
    assert r.returncode == 0, r.stderr
    return wasmtime.Module(ENGINE, out.read_bytes())


class Probe:
    """One instance of the probe, with a memory limit like the daemon's."""

    def __init__(self, module: wasmtime.Module, memory_mb: int = 64) -> None:
        self.store = wasmtime.Store(ENGINE)
        self.store.set_limits(memory_size=memory_mb << 20)
        assert not module.imports  # the probe calls no host function
        self.inst = wasmtime.Instance(self.store, module, [])
        self.mem: wasmtime.Memory = self.export("memory")

    def export(self, name: str) -> Any:
        return self.inst.exports(self.store)[name]

    def alloc(self, n: int) -> int:
        p: int = self.export("wasm_alloc")(self.store, n)
        return p

    def free(self, p: int, n: int) -> None:
        self.export("wasm_free")(self.store, p, n)

    def put(self, data: bytes) -> tuple[int, int]:
        size = max(len(data), 1)
        p = self.alloc(size)
        assert p
        self.mem.write(self.store, data, p)
        return p, size

    def take(self, p: int) -> bytes | None:
        """Read and free a [u32 length][bytes] result; None for 0."""
        if p == 0:
            return None
        n = int.from_bytes(self.mem.read(self.store, p, p + 4), "little")
        data = self.mem.read(self.store, p + 4, p + 4 + n)
        self.free(p, 4 + n)
        return data

    def call(self, name: str, data: bytes, *extra: int) -> bytes | None:
        p, size = self.put(data)
        try:
            return self.take(self.export(name)(self.store, p, len(data), *extra))
        finally:
            self.free(p, size)


@pytest.fixture
def probe(probe_wasm: wasmtime.Module) -> Iterator[Probe]:
    yield Probe(probe_wasm)


def python_accepts(text: str) -> bool:
    def no_constants(name: str) -> None:
        raise ValueError(name)
    try:
        json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):
        return False
    return True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_writer_round_trips_what_the_reader_reads(probe: Probe, value: Any, ascii_only: bool,
                                                  indent: int | None) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    out = probe.call("probe_json", text.encode())
    assert out is not None and out != b"!", text
    assert json.loads(out) == value
    assert json.loads(out) == json.loads(text)
    assert b"\n" not in out  # compact


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.text(alphabet=st.sampled_from(list('{}[]":,-+.eE0123456789 \ttruefalsnul\\/u"abc')), max_size=30),
    json_values.map(json.dumps).flatmap(
        lambda s: st.integers(0, len(s)).map(lambda i: s[:i] + s[i + 1:]))))  # one character dropped
def test_reader_accepts_exactly_what_python_accepts(probe: Probe, text: str) -> None:
    accepted = probe.call("probe_json", text.encode()) is not None
    assert accepted == python_accepts(text), text


@pytest.mark.parametrize("text", [
    "", " ", "nul", "01", "1.", ".5", "-", "1e", "+1", '"\\x"', '"\\u12g4"', '"a\nb"', "[1,]",
    '{"a":1,}', '{"a" 1}', "{1:2}", "[1 2]", "NaN", "Infinity", "1 2", '"', "[" * 200 + "]" * 200,
])
def test_reader_refuses(probe: Probe, text: str) -> None:
    assert probe.call("probe_json", text.encode()) is None


def test_get_compares_decoded_keys(probe: Probe) -> None:
    doc = b'{"a": 1, "\\u00e9t\\u00e9": [2], "x\\"y": {"z": null}, "a": 3, "\\ud83d\\ude00": true}'
    p, size = probe.put("été\0".encode())
    assert probe.take(probe.export("probe_get")(probe.store, *probe.put(doc), p)) == b"[2]"
    for key, raw in [("a", b"1"), ('x"y', b'{"z": null}'), ("😀", b"true")]:
        kp, _ = probe.put(key.encode() + b"\0")
        dp, _ = probe.put(doc)
        assert probe.take(probe.export("probe_get")(probe.store, dp, len(doc), kp)) == raw
    kp, _ = probe.put(b"missing\0")
    dp, _ = probe.put(doc)
    assert probe.export("probe_get")(probe.store, dp, len(doc), kp) == 0


@pytest.mark.parametrize("literal,u64,i64", [
    ("0", 0, 0), ("42", 42, 42), ("-1", None, -1), ("18446744073709551615", 2**64 - 1, None),
    ("18446744073709551616", None, None), ("9223372036854775807", 2**63 - 1, 2**63 - 1),
    ("-9223372036854775808", None, -(2**63)), ("-9223372036854775809", None, None),
    ("1.0", None, None), ("1e3", None, None), ('"1"', None, None), ("-0", None, 0),
])
def test_integers(probe: Probe, literal: str, u64: int | None, i64: int | None) -> None:
    out_u, out_i = probe.alloc(8), probe.alloc(8)
    p, _ = probe.put(literal.encode())
    flags = probe.export("probe_int")(probe.store, p, len(literal), out_u, out_i)
    got_u = int.from_bytes(probe.mem.read(probe.store, out_u, out_u + 8), "little") if flags & 1 else None
    got_i = int.from_bytes(probe.mem.read(probe.store, out_i, out_i + 8), "little", signed=True) \
        if flags & 2 else None
    assert (got_u, got_i) == (u64, i64)


@given(u=st.uuids(), upper=st.booleans(), hyphens=st.booleans())
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_uuid_text_round_trip(probe: Probe, u: uuid.UUID, upper: bool, hyphens: bool) -> None:
    text = str(u) if hyphens else u.hex
    text = text.upper() if upper else text
    assert probe.call("probe_uuid", text.encode()) == str(u).encode()


@pytest.mark.parametrize("text", ["", "not-a-uuid", str(uuid.uuid4())[:-1] + "g",
                                  str(uuid.uuid4()).replace("-", "_"), "{" + str(uuid.uuid4()) + "}"])
def test_uuid_refused(probe: Probe, text: str) -> None:
    assert probe.call("probe_uuid", text.encode()) is None


def test_printf(probe: Probe) -> None:
    out = probe.take(probe.export("probe_printf")(probe.store))
    assert out == (b"str|abc|c|-42|42|-7|7|-9223372036854775808|18446744073709551615|ff|%")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.booleans(), st.one_of(st.integers(1, 100), st.integers(100, 70_000),
                                                         st.integers(70_000, 400_000))), max_size=60))
def test_allocator_blocks_never_overlap(probe_wasm: wasmtime.Module, ops: list[tuple[bool, int]]) -> None:
    p = Probe(probe_wasm)
    live: dict[int, tuple[int, int]] = {}  # ptr -> (size, fill byte)
    for i, (free_one, size) in enumerate(ops):
        if free_one and live:
            ptr = sorted(live)[size % len(live)]
            p.free(ptr, live.pop(ptr)[0])
            continue
        ptr = p.alloc(size)
        assert ptr != 0 and ptr % 8 == 0 and ptr + size <= p.mem.data_len(p.store)
        for other, (osize, _) in live.items():
            assert ptr + size <= other or other + osize <= ptr, "overlapping blocks"
        fill = i % 251 + 1
        p.mem.write(p.store, bytes([fill]) * size, ptr)
        live[ptr] = (size, fill)
    for ptr, (size, fill) in live.items():
        assert p.mem.read(p.store, ptr, ptr + size) == bytes([fill]) * size


def test_allocator_edges(probe_wasm: wasmtime.Module) -> None:
    p = Probe(probe_wasm, memory_mb=4)
    assert p.alloc(0) != 0  # never 0 (0 is failure); nothing may be written there
    p.free(p.alloc(0), 0)
    assert p.alloc(-1) == 0
    assert p.alloc(8 << 20) == 0  # over the store's 4 MiB: memory.grow fails, not a trap
    a = p.alloc(100)
    p.free(a, 100)
    assert p.alloc(120) == a  # same size class: reused
    big = p.alloc(190_000)
    p.free(big, 190_000)
    assert p.alloc(140_000) == big  # both round to three 64 KiB pages
    p.free(0, 10)  # no-op
