#!/usr/bin/env bash
# Installs (or removes) sd as a systemd service. Used by `make install-service` and
# `make uninstall-service`; see docs/service.md.
#
# Usage: systemd/install.sh install | uninstall | render OUTDIR
#   install    as root: $PREFIX/venv (a non-editable install of this checkout, on
#              Debian's /usr/bin/python3), $PREFIX/extensions (build/extensions, built
#              first by `make extensions`), the "sd" user and group (sysusers.d), the
#              system units in
#              /usr/local/lib/systemd/system and the user units in
#              /usr/local/lib/systemd/user, and /usr/local/bin/{sd,sd-daemon}.
#              Nothing is enabled or started.
#   uninstall  as root: stops and disables the units, removes all of the above.
#              Keeps /var/lib/sd (the data) and the sd user; docs/service.md says how
#              to remove them.
#   render     writes the units, with /opt/sd replaced by $PREFIX, to OUTDIR/system
#              and OUTDIR/user (the tests verify these).
# Environment: PREFIX (default /opt/sd), SERVICE_PYTHON (default /usr/bin/python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-/opt/sd}"
SERVICE_PYTHON="${SERVICE_PYTHON:-/usr/bin/python3}"
SYSTEM_UNITS=/usr/local/lib/systemd/system
USER_UNITS=/usr/local/lib/systemd/user
SYSUSERS=/usr/local/lib/sysusers.d/sd.conf
BIN=/usr/local/bin

log() { echo "install-service: $*" >&2; }

render() {  # render OUTDIR
    local out="$1" f
    mkdir -p "$out/system" "$out/user"
    for f in sd.service sd.socket; do
        sed "s|/opt/sd|$PREFIX|g" "$ROOT/systemd/$f" > "$out/system/$f"
        sed "s|/opt/sd|$PREFIX|g" "$ROOT/systemd/user/$f" > "$out/user/$f"
    done
}

systemd_running() { [ -d /run/systemd/system ]; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "run as root (sudo make $1-service)"
        exit 1
    fi
}

do_install() {
    need_root install
    # Built beforehand by the checkout's owner: cargo run as root here would leave
    # root-owned files in build/.
    if ! compgen -G "$ROOT/build/extensions/*/manifest.json" >/dev/null; then
        log "no built extensions in build/extensions: run \`make extensions\` first (not as root)"
        exit 1
    fi
    # The service user must be able to run the interpreter: not one under /root (pyenv).
    if ! "$SERVICE_PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        log "$SERVICE_PYTHON is missing or older than 3.11 (set SERVICE_PYTHON)"
        exit 1
    fi
    if ! "$SERVICE_PYTHON" -c 'import ensurepip' 2>/dev/null; then
        log "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
    fi

    log "installing the daemon into $PREFIX/venv"
    # From a copy of the sources: a build in the checkout would leave root-owned files.
    local src
    src="$(mktemp -d)"
    cp -r "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/daemon" "$ROOT/rpc" "$src/"
    cp "$ROOT/README.md" "$src/" 2>/dev/null || touch "$src/README.md"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    find "$src" -name '*.so' -delete  # compiled again for the service's Python (setup.py)
    bash "$ROOT/scripts/ensure-build-tools.sh" "$SERVICE_PYTHON"  # compiles _listdir.c
    "$SERVICE_PYTHON" -m venv --clear "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "$src"
    rm -rf "$src"

    log "installing extensions and docs"
    rm -rf "$PREFIX/extensions"
    mkdir -p "$PREFIX/extensions" "$PREFIX/doc"
    cp -r "$ROOT/build/extensions/." "$PREFIX/extensions/"
    install -m 0644 "$ROOT/docs/service.md" "$PREFIX/doc/service.md"
    chmod -R u=rwX,go=rX "$PREFIX"

    log "creating the sd user and group"
    install -D -m 0644 "$ROOT/systemd/sd.sysusers" "$SYSUSERS"
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERS"
    else
        getent group sd >/dev/null || groupadd --system sd
        getent passwd sd >/dev/null || useradd --system --gid sd --home-dir /var/lib/sd \
            --no-create-home --shell /usr/sbin/nologin --comment "sd daemon" sd
    fi

    log "installing units into $SYSTEM_UNITS and $USER_UNITS"
    local tmp
    tmp="$(mktemp -d)"
    render "$tmp"
    install -D -m 0644 -t "$SYSTEM_UNITS" "$tmp/system/sd.service" "$tmp/system/sd.socket"
    install -D -m 0644 -t "$USER_UNITS" "$tmp/user/sd.service" "$tmp/user/sd.socket"
    rm -rf "$tmp"
    ln -sfn "$PREFIX/venv/bin/sd" "$BIN/sd"
    ln -sfn "$PREFIX/venv/bin/sd-daemon" "$BIN/sd-daemon"

    if systemd_running; then
        systemctl daemon-reload
        systemctl try-restart sd.service  # an upgrade: restart the running daemon
    else
        log "systemd is not running here: units installed, not loaded"
    fi
    log "done. Next: systemctl enable --now sd.socket   (docs/service.md)"
}

do_uninstall() {
    need_root uninstall
    if systemd_running; then
        systemctl disable --now sd.socket sd.service 2>/dev/null || true
        systemctl --global disable sd.socket sd.service 2>/dev/null || true
    fi
    rm -f "$SYSTEM_UNITS/sd.service" "$SYSTEM_UNITS/sd.socket" \
          "$USER_UNITS/sd.service" "$USER_UNITS/sd.socket" "$SYSUSERS"
    local link
    for link in "$BIN/sd" "$BIN/sd-daemon"; do
        if [ -L "$link" ] && [[ "$(readlink "$link")" == "$PREFIX"/* ]]; then
            rm -f "$link"
        fi
    done
    rm -rf "$PREFIX"
    if systemd_running; then
        systemctl daemon-reload
    fi
    log "removed. Kept: /var/lib/sd (data) and the sd user; see docs/service.md"
}

case "${1:-}" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    render) [ $# -eq 2 ] || { sed -n '5,17p' "$0"; exit 2; }; render "$2" ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
