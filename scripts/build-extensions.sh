#!/usr/bin/env bash
# Builds every extension under extensions/*/ (or the directories given) and lays
# the result out as
#
#   build/extensions/<id>/manifest.json
#   build/extensions/<id>/<wasm_file>          (both taken from manifest.json)
#
# A directory with a Cargo.toml is a Rust crate: built for wasm32-unknown-unknown
# in release mode, offline, with Debian's toolchain. Cargo's target dir is
# build/cargo-target; CARGO_HOME is build/cargo-home (generated here, so ~/.cargo
# is never touched). Re-running with nothing changed takes about a second.
#
# A directory without one but with *.c files is a C extension: its .c files are
# compiled together with `zig cc` (PyPI's ziglang, installed in .venv by
# `make setup`) for wasm32-freestanding against guest-sdk/c/spacedrive.h, no
# libc. Zig's cache is build/zig-cache; an unchanged extension rebuilds from it.
#
# Works on a fresh Debian 12 as root: missing Rust toolchain pieces are installed
# with apt-get. rustup's cargo (if first on PATH) is never used: it has no
# wasm32 target and there is no network for it.
#
# Usage: scripts/build-extensions.sh [-q|--quiet] [--test] [--out DIR] [EXT_DIR...]
#   EXT_DIR  build only these extension directories; they may lie outside the
#            repository (a Rust crate there is its own Cargo workspace)
#   --out    lay the results out in DIR/<id>/ instead of build/extensions/<id>/
#   --test   also run the SDK's unit tests natively (cargo test -p spacedrive-sdk)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUIET=""
RUN_TESTS=""
OUT=""
ext_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -q|--quiet) QUIET="--quiet" ;;
        --test) RUN_TESTS=1 ;;
        --out) OUT="${2:?--out needs a directory}"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        -*) echo "build-extensions: unknown argument: $1" >&2; exit 2 ;;
        *) ext_args+=("$(cd "$1" && pwd)") ;;
    esac
    shift
done
PY="${SD_PYTHON:-$ROOT/.venv/bin/python}"

log() { echo "build-extensions: $*" >&2; }

# --- find the extensions ------------------------------------------------------
shopt -s nullglob
rust_dirs=()
c_dirs=()
if [ ${#ext_args[@]} -eq 0 ]; then
    for dir in "$ROOT"/extensions/*/; do ext_args+=("${dir%/}"); done
fi
for dir in "${ext_args[@]}"; do
    rel="${dir#"$ROOT"/}"
    if [ -f "$dir/Cargo.toml" ]; then
        rust_dirs+=("$dir")
    elif compgen -G "$dir/*.c" >/dev/null; then
        c_dirs+=("$dir")
        # The root Cargo.toml declares members = ["guest-sdk", "extensions/*"], and
        # cargo refuses a glob match without a Cargo.toml: it must be excluded.
        if [[ "$rel" == extensions/* ]] && ! grep -q "\"$rel\"" Cargo.toml; then
            log "$rel is a C extension under extensions/, but Cargo.toml's workspace members"
            log "  include extensions/*: add \"$rel\" to [workspace] exclude in Cargo.toml"
            exit 1
        fi
    elif [[ "$rel" == extensions/* ]] && grep -q "\"$rel\"" Cargo.toml; then
        continue  # excluded from the workspace and not a C extension: not ours to build
    else
        log "$rel has neither a Cargo.toml (Rust) nor *.c files (C)"
        exit 1
    fi
    if [ ! -f "$dir/manifest.json" ]; then
        log "$rel has no manifest.json"
        exit 1
    fi
done
if [ ${#rust_dirs[@]} -eq 0 ] && [ ${#c_dirs[@]} -eq 0 ]; then
    log "no extensions to build"
    exit 0
fi

BUILD="$ROOT/build"
out_root="${OUT:-$BUILD/extensions}"
mkdir -p "$out_root"
out_root="$(cd "$out_root" && pwd)"

# manifest.json's id and wasm_file, tab-separated.
manifest_fields() {
    python3 - "$1/manifest.json" <<'PY'
import json, sys
path = sys.argv[1]
try:
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"build-extensions: {path}: {e}")
ext_id, wasm_file = m.get("id"), m.get("wasm_file")
for key, val in (("id", ext_id), ("wasm_file", wasm_file)):
    if not isinstance(val, str) or not val or "/" in val or val.startswith("."):
        sys.exit(f"build-extensions: {path}: bad or missing {key!r}")
print(f"{ext_id}\t{wasm_file}")
PY
}

# Copies a built module and its manifest into $out_root/<id>/ (temp file + rename,
# so a running daemon never sees a partial file).
lay_out() {
    local dir="$1" src="$2" ext_id="$3" wasm_file="$4"
    local dest="$out_root/$ext_id"
    mkdir -p "$dest"
    cp "$src" "$dest/.$wasm_file.tmp" && chmod 644 "$dest/.$wasm_file.tmp" && mv -f "$dest/.$wasm_file.tmp" "$dest/$wasm_file"
    cp "$dir/manifest.json" "$dest/.manifest.json.tmp" && mv -f "$dest/.manifest.json.tmp" "$dest/manifest.json"
    [ -n "$QUIET" ] || log "$ext_id -> ${dest#"$ROOT"/}/$wasm_file ($(stat -c %s "$dest/$wasm_file") bytes)"
}

# --- C ----------------------------------------------------------------------
if [ ${#c_dirs[@]} -gt 0 ]; then
    if ! "$PY" -c 'import ziglang' 2>/dev/null; then
        log "C extensions need zig (PyPI's ziglang) in $PY: run \`make setup\` first"
        exit 1
    fi
    export ZIG_GLOBAL_CACHE_DIR="$BUILD/zig-cache" ZIG_LOCAL_CACHE_DIR="$BUILD/zig-cache"
    mkdir -p "$BUILD/c-target"
    for dir in "${c_dirs[@]}"; do
        IFS=$'\t' read -r ext_id wasm_file <<< "$(manifest_fields "$dir")"
        obj="$BUILD/c-target/$ext_id.wasm"
        "$PY" -m ziglang cc -target wasm32-freestanding -nostdlib -ffreestanding -Os \
            -Wall -Wextra -Werror=implicit-function-declaration \
            -I "$ROOT/guest-sdk/c" -I "$dir" -Wl,--no-entry -o "$obj" "$dir"/*.c
        lay_out "$dir" "$obj" "$ext_id" "$wasm_file"
    done
fi

[ ${#rust_dirs[@]} -gt 0 ] || exit 0

# --- Rust -------------------------------------------------------------------
CARGO=/usr/bin/cargo
RUSTC=/usr/bin/rustc
RUSTDOC=/usr/bin/rustdoc
REGISTRY=/usr/share/cargo/registry
APT_PACKAGES=(rustc cargo libstd-rust-dev-wasm32 librust-serde-dev librust-serde-json-dev librust-serde-derive-dev)

have_crate() { compgen -G "$REGISTRY/$1-[0-9]*" >/dev/null; }

toolchain_ready() {
    [ -x "$CARGO" ] && [ -x "$RUSTC" ] || return 1
    [ -d /usr/lib/rustlib/wasm32-unknown-unknown/lib ] || return 1
    local c
    # serde_json pulls itoa + ryu; serde_derive pulls proc-macro2, quote, syn, unicode-ident.
    for c in serde serde_derive serde_json itoa ryu proc-macro2 quote syn unicode-ident; do
        have_crate "$c" || return 1
    done
    command -v python3 >/dev/null 2>&1 || return 1
}

if ! toolchain_ready; then
    log "Debian Rust toolchain / crates missing: installing ${APT_PACKAGES[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            log "not root and no sudo: install as root: apt-get install -y ${APT_PACKAGES[*]}"
            exit 1
        fi
    fi
    pkgs=("${APT_PACKAGES[@]}")
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
    if ! toolchain_ready; then
        log "toolchain still incomplete after apt-get install"
        exit 1
    fi
fi

# --- isolated cargo configuration -------------------------------------------
export CARGO_HOME="$BUILD/cargo-home"
TARGET_DIR="$BUILD/cargo-target"
mkdir -p "$CARGO_HOME" "$TARGET_DIR"
config="[source.crates-io]
replace-with = \"debian-packages\"

[source.debian-packages]
directory = \"$REGISTRY\"

[net]
offline = true

[term]
color = \"never\"
"
if [ ! -f "$CARGO_HOME/config.toml" ] || [ "$(cat "$CARGO_HOME/config.toml")" != "$(printf '%s' "$config")" ]; then
    printf '%s' "$config" > "$CARGO_HOME/config.toml"
fi

export RUSTC RUSTDOC
export PATH="/usr/bin:$PATH"
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTFLAGS CARGO_ENCODED_RUSTFLAGS \
      CARGO_BUILD_TARGET CARGO_TARGET_DIR CARGO_BUILD_RUSTFLAGS RUSTUP_TOOLCHAIN || true

# Map each crate dir to its package name, cdylib (wasm) file name, id and wasm_file.
# A crate outside the repository is its own workspace, built through its Cargo.toml.
metadata="$("$CARGO" metadata --offline --no-deps --format-version 1)"
plan="$(METADATA="$metadata" CARGO="$CARGO" python3 - "$ROOT" "${rust_dirs[@]}" <<'PY'
import json, os, subprocess, sys
root, dirs = sys.argv[1], sys.argv[2:]

def packages(meta):
    return {os.path.realpath(p["manifest_path"]): p for p in meta["packages"]}

members = packages(json.loads(os.environ["METADATA"]))
for d in dirs:
    cargo_toml = os.path.realpath(os.path.join(d, "Cargo.toml"))
    pkg, own = members.get(cargo_toml), "-"
    if pkg is None:
        if cargo_toml.startswith(os.path.join(root, "") ):
            sys.exit(f"build-extensions: {d} is not a member of the Cargo workspace (root Cargo.toml)")
        out = subprocess.run([os.environ["CARGO"], "metadata", "--offline", "--no-deps",
                              "--format-version", "1", "--manifest-path", cargo_toml],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"build-extensions: {d}: {out.stderr.strip()}")
        pkg, own = packages(json.loads(out.stdout)).get(cargo_toml), cargo_toml
    libs = [t for t in pkg["targets"] if "cdylib" in t["crate_types"]]
    if not libs:
        sys.exit(f"build-extensions: {d}: [lib] crate-type must include \"cdylib\"")
    mpath = os.path.join(d, "manifest.json")
    try:
        with open(mpath, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"build-extensions: {mpath}: {e}")
    ext_id, wasm_file = m.get("id"), m.get("wasm_file")
    for key, val in (("id", ext_id), ("wasm_file", wasm_file)):
        if not isinstance(val, str) or not val or "/" in val or val.startswith("."):
            sys.exit(f"build-extensions: {mpath}: bad or missing {key!r}")
    built = libs[0]["name"].replace("-", "_") + ".wasm"
    print("\t".join([d, pkg["name"], built, ext_id, wasm_file, own]))
PY
)"

pkg_args=()
own_manifests=()
while IFS=$'\t' read -r _dir pkg _built _id _wasm own; do
    if [ "$own" = "-" ]; then pkg_args+=(-p "$pkg"); else own_manifests+=("$own"); fi
done <<< "$plan"

# --- build ------------------------------------------------------------------
cargo_build() {
    "$CARGO" build $QUIET --offline --release --target wasm32-unknown-unknown \
        --target-dir "$TARGET_DIR" "$@"
}
[ ${#pkg_args[@]} -eq 0 ] || cargo_build "${pkg_args[@]}"
for own in "${own_manifests[@]}"; do
    cargo_build --manifest-path "$own"
done

# --- lay out <out>/<id>/ ----------------------------------------------------
while IFS=$'\t' read -r dir pkg built ext_id wasm_file _own; do
    src="$TARGET_DIR/wasm32-unknown-unknown/release/$built"
    if [ ! -f "$src" ]; then
        log "$pkg: expected $src was not produced"
        exit 1
    fi
    lay_out "$dir" "$src" "$ext_id" "$wasm_file"
done <<< "$plan"

if [ -n "$RUN_TESTS" ]; then
    "$CARGO" test $QUIET --offline --target-dir "$TARGET_DIR" -p spacedrive-sdk
fi
