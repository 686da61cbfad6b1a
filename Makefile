# The two commands a new machine needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint format redis-server

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

## Install and start the gateway (settings from the environment and .env).
run: $(VENV)/.installed
	$(VENV)/bin/embeddings-gateway

## Install everything (Redis server included) and run the linters and the whole test suite.
test: $(VENV)/.installed-test redis-server
	$(VENV)/bin/ruff check app tests
	$(VENV)/bin/ruff format --check app tests
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check app tests
	$(VENV)/bin/ruff format --check app tests

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format app tests
	$(VENV)/bin/ruff check --fix app tests

# The test suite starts and stops its own redis-server; it only needs the binary.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
