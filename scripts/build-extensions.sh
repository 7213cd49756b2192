#!/usr/bin/env bash
# Builds every Rust extension crate under extensions/*/ (each directory with a
# Cargo.toml) for wasm32-unknown-unknown in release mode, offline, with
# Debian's toolchain, and lays the result out as
#
#   build/extensions/<id>/manifest.json
#   build/extensions/<id>/<wasm_file>          (both taken from manifest.json)
#
# Cargo's target dir is build/cargo-target; CARGO_HOME is build/cargo-home
# (generated here, so ~/.cargo is never touched). Re-running with nothing
# changed takes about a second (cargo's own freshness check).
#
# Works on a fresh Debian 12 as root: missing toolchain pieces are installed
# with apt-get. rustup's cargo (if first on PATH) is never used: it has no
# wasm32 target and there is no network for it.
#
# Usage: scripts/build-extensions.sh [-q|--quiet] [--test]
#   --test   also run the SDK's unit tests natively (cargo test -p spacedrive-sdk)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUIET=""
RUN_TESTS=""
for arg in "$@"; do
    case "$arg" in
        -q|--quiet) QUIET="--quiet" ;;
        --test) RUN_TESTS=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "build-extensions: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

CARGO=/usr/bin/cargo
RUSTC=/usr/bin/rustc
RUSTDOC=/usr/bin/rustdoc
REGISTRY=/usr/share/cargo/registry
APT_PACKAGES=(rustc cargo libstd-rust-dev-wasm32 librust-serde-dev librust-serde-json-dev librust-serde-derive-dev)

log() { echo "build-extensions: $*" >&2; }

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
BUILD="$ROOT/build"
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

# --- find the extension crates ----------------------------------------------
shopt -s nullglob
crate_dirs=()
for manifest in extensions/*/Cargo.toml; do
    crate_dirs+=("$(dirname "$manifest")")
done
# The root Cargo.toml declares members = ["guest-sdk", "extensions/*"], and
# cargo refuses a glob match without a Cargo.toml; name such dirs up front.
for dir in extensions/*/; do
    dir="${dir%/}"
    if [ ! -f "$dir/Cargo.toml" ] && ! grep -q "\"$dir\"" Cargo.toml; then
        log "$dir has no Cargo.toml, but Cargo.toml's workspace members include extensions/*:"
        log "  make it a crate, or add \"$dir\" to [workspace] exclude in Cargo.toml"
        exit 1
    fi
done
if [ ${#crate_dirs[@]} -eq 0 ]; then
    log "no extension crates under extensions/"
    exit 0
fi

# Map each crate dir to its package name and cdylib (wasm) file name.
metadata="$("$CARGO" metadata --offline --no-deps --format-version 1)"
plan="$(METADATA="$metadata" python3 - "$ROOT" "${crate_dirs[@]}" <<'PY'
import json, os, sys
root, dirs = sys.argv[1], sys.argv[2:]
meta = json.loads(os.environ["METADATA"])
by_manifest = {os.path.realpath(p["manifest_path"]): p for p in meta["packages"]}
for d in dirs:
    cargo_toml = os.path.realpath(os.path.join(root, d, "Cargo.toml"))
    pkg = by_manifest.get(cargo_toml)
    if pkg is None:
        sys.exit(f"build-extensions: {d} is not a member of the Cargo workspace (root Cargo.toml)")
    libs = [t for t in pkg["targets"] if "cdylib" in t["crate_types"]]
    if not libs:
        sys.exit(f"build-extensions: {d}: [lib] crate-type must include \"cdylib\"")
    mpath = os.path.join(root, d, "manifest.json")
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
    print("\t".join([d, pkg["name"], built, ext_id, wasm_file]))
PY
)"

pkg_args=()
while IFS=$'\t' read -r _dir pkg _built _id _wasm; do
    pkg_args+=(-p "$pkg")
done <<< "$plan"

# --- build ------------------------------------------------------------------
"$CARGO" build $QUIET --offline --release \
    --target wasm32-unknown-unknown \
    --target-dir "$TARGET_DIR" \
    "${pkg_args[@]}"

# --- lay out build/extensions/<id>/ -----------------------------------------
out_root="$BUILD/extensions"
mkdir -p "$out_root"
while IFS=$'\t' read -r dir pkg built ext_id wasm_file; do
    src="$TARGET_DIR/wasm32-unknown-unknown/release/$built"
    if [ ! -f "$src" ]; then
        log "$pkg: expected $src was not produced"
        exit 1
    fi
    dest="$out_root/$ext_id"
    mkdir -p "$dest"
    # Copy via temp file + rename so a running daemon never sees a partial file.
    cp "$src" "$dest/.$wasm_file.tmp" && chmod 644 "$dest/.$wasm_file.tmp" && mv -f "$dest/.$wasm_file.tmp" "$dest/$wasm_file"
    cp "$dir/manifest.json" "$dest/.manifest.json.tmp" && mv -f "$dest/.manifest.json.tmp" "$dest/manifest.json"
    [ -n "$QUIET" ] || log "$ext_id -> build/extensions/$ext_id/$wasm_file ($(stat -c %s "$dest/$wasm_file") bytes)"
done <<< "$plan"

if [ -n "$RUN_TESTS" ]; then
    "$CARGO" test $QUIET --offline --target-dir "$TARGET_DIR" -p spacedrive-sdk
fi
