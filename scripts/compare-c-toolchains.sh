#!/usr/bin/env bash
# Builds extensions/c-counter with the two toolchains the C SDK works with and
# prints the median wall time of RUNS builds and the module size of each:
#   zig cc (PyPI ziglang in .venv)   cold (empty cache) and warm (cached)
#   clang + wasm-ld (Debian clang-14, lld-14), which has no build cache
# The figures in README "Dependencies" come from this script. It installs
# nothing: without clang-14/wasm-ld-14 on PATH it measures zig only.
# Usage: scripts/compare-c-toolchains.sh [RUNS]   (default 5)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${1:-5}"
PY="$ROOT/.venv/bin/python"
SRC=extensions/c-counter/counter.c
FLAGS=(-nostdlib -ffreestanding -Os -Wall -Wextra -I guest-sdk/c -Wl,--no-entry)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
seconds() { local t0=$EPOCHREALTIME; "$@"; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f\n", b - a}'; }

zig_build() {
    ZIG_GLOBAL_CACHE_DIR="$TMP/zig-cache" ZIG_LOCAL_CACHE_DIR="$TMP/zig-cache" \
        "$PY" -m ziglang cc -target wasm32-freestanding "${FLAGS[@]}" -o "$TMP/zig.wasm" "$SRC"
}
clang_build() {
    clang-14 --target=wasm32 "${FLAGS[@]}" -Wl,--stack-first -o "$TMP/clang.wasm" "$SRC"
}

echo "zig $("$PY" -m ziglang version), $RUNS runs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
cold=$(for _ in $(seq "$RUNS"); do rm -rf "$TMP/zig-cache"; seconds zig_build; done | median)
warm=$(for _ in $(seq "$RUNS"); do seconds zig_build; done | median)
echo "zig cc       cold ${cold}s  warm ${warm}s  $(stat -c %s "$TMP/zig.wasm") bytes"
if command -v clang-14 >/dev/null && command -v wasm-ld-14 >/dev/null; then
    t=$(for _ in $(seq "$RUNS"); do seconds clang_build; done | median)
    echo "clang-14     every build ${t}s  $(stat -c %s "$TMP/clang.wasm") bytes"
else
    echo "clang-14     not installed (apt-get install clang-14 lld-14)"
fi
