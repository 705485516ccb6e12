# vitaccel: two commands on a fresh machine, `make demo` and `make test`.
# `make setup` is idempotent: it (re)installs only when pyproject.toml or setup.py changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: setup demo test test-all bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev,hf,cluster]"
	@# Icarus Verilog is the cross-check simulator; Debian packages it. Installed when we are root.
	@if ! command -v iverilog >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog >/dev/null) \
	      || echo "warning: could not install iverilog; Icarus tests will be skipped"; \
	  else echo "note: iverilog not found and not root: Icarus tests will be skipped (apt-get install iverilog)"; fi; \
	fi
	@touch $(STAMP)

demo: setup
	$(BIN)/vitaccel demo

test: setup
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q

test-all: setup
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup -q -m ""

bench: setup
	mkdir -p bench/results
	$(BIN)/vitaccel bench all --config tiny --json > bench/results/tiny.json
	@echo "wrote bench/results/tiny.json"

docs: setup
	$(BIN)/python -m vitaccel.hw.spec.docs --write
	$(BIN)/python -m vitaccel.sim.numerics_report --write

clean:
	rm -rf $(VENV) build .pytest_cache
