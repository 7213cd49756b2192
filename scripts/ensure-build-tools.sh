#!/usr/bin/env bash
# Installs what compiling daemon/locations/_listdir.c needs (setup.py, run by `pip install`):
# a C compiler and the headers of the Python it is built for, given as $1 (default python3).
# Debian's packages gcc, libc6-dev and python3-dev, only when one is missing: a no-op taking
# milliseconds when all is there. Called by `make setup` and systemd/install.sh.
set -euo pipefail
PY="${1:-python3}"
include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if command -v cc >/dev/null 2>&1 && [ -f "$include/Python.h" ]; then exit 0; fi

source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
apt_install ensure-build-tools gcc libc6-dev python3-dev
if ! command -v cc >/dev/null 2>&1 || [ ! -f "$include/Python.h" ]; then
    echo "ensure-build-tools: still no C compiler or $include/Python.h (is $PY Debian's python3?)" >&2
    exit 1
fi
