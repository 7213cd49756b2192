# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXT_BUILD := build/extensions
PREFIX ?= /opt/sd

.PHONY: setup extensions run test bench bench-scale lint clean install-service uninstall-service

setup: $(STAMP)

# Re-installs (and compiles daemon/locations/_listdir.c) only when one of these changes.
$(STAMP): pyproject.toml setup.py daemon/locations/_listdir.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash scripts/ensure-build-tools.sh $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	touch $(STAMP)

# Builds every extension in extensions/ to wasm32: Rust crates with Debian's toolchain
# (installed when missing), C with zig cc from the venv.
extensions: setup
	bash scripts/build-extensions.sh

run: setup extensions
	$(VENV)/bin/sd-daemon --bundled-extensions $(EXT_BUILD)

test: setup extensions
	bash scripts/ensure-test-tools.sh && $(VENV)/bin/pytest -q

# As root, after `make extensions` as yourself: the daemon in $(PREFIX)/venv, the "sd"
# user, the system and user units (docs/service.md). Enables nothing.
install-service:
	PREFIX=$(PREFIX) bash systemd/install.sh install

uninstall-service:
	PREFIX=$(PREFIX) bash systemd/install.sh uninstall

bench: setup extensions
	bash scripts/ensure-test-tools.sh && $(PY) -m bench

bench-scale: setup extensions
	$(PY) -m bench.scale

lint: setup
	$(VENV)/bin/ruff check daemon rpc tests bench
	$(VENV)/bin/mypy daemon rpc
	$(VENV)/bin/lint-imports

clean:
	rm -rf build $(VENV)
