#!/usr/bin/env bash
# Sourced by the ensure-*.sh scripts: apt_install WHO PACKAGE... installs Debian packages
# as root, or through sudo; without either it says what to run and fails.
apt_install() {
    local who="$1"; shift
    echo "$who: installing $*" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            echo "$who: not root and no sudo: as root run apt-get install -y $*" >&2
            return 1
        fi
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
