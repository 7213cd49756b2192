#!/usr/bin/env bash
# Installs the Debian packages the test suite runs (beyond the venv and the Rust
# toolchain that scripts/build-extensions.sh sees to), only when a tool is missing:
#   systemd      systemd-analyze (verify, security), systemd-socket-activate
#                (tests/test_systemd.py; neither needs systemd running)
#   util-linux   setpriv (tests that connect as another user)
#   tmux         a real terminal for the CLI's live display (tests/test_cli_terminal.py)
#   jdupes       the reference the duplicate finder must agree with (tests and `make bench`)
# A no-op taking milliseconds when all is there. Called by `make test` and `make bench`.
set -euo pipefail

declare -A PACKAGE_OF=(
    [systemd-analyze]=systemd
    [systemd-socket-activate]=systemd
    [setpriv]=util-linux
    [tmux]=tmux
    [jdupes]=jdupes
)

missing=()
for tool in "${!PACKAGE_OF[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        pkg="${PACKAGE_OF[$tool]}"
        [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
apt_install ensure-test-tools "${missing[@]}"
for tool in "${!PACKAGE_OF[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "ensure-test-tools: $tool still missing" >&2; exit 1; }
done
