"""Starting what every run needs on 127.0.0.1: redis-server, the fake upstreams, the gateway."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Managed, free_port
from bench.session import ROOT, UPSTREAM_KEY, Bench, Target


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_redis(bench: Bench) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: run `make redis-server` (Debian package)")
    port = free_port()
    data = bench.workdir / "redis"
    data.mkdir()
    redis = Managed(
        "redis-server",
        [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data),
            "--daemonize", "no",
        ],
        log_path=bench.workdir / "redis.log",
    ).start()  # fmt: skip

    def pong() -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    redis.wait_ready(pong, timeout=15)
    return f"redis://127.0.0.1:{port}/0"


def start_fake(bench: Bench, name: str, fault_rate: float) -> tuple[Managed, str]:
    fake = Managed(
        name,
        [
            sys.executable, "-m", "bench.fake_server",
            "--dims", str(bench.args.dims),
            "--key", UPSTREAM_KEY,
            "--max-inputs", "2048",
            "--fault-rate", str(fault_rate),
        ],
        log_path=bench.workdir / f"{name}.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()  # fmt: skip
    url = ""

    def listening() -> bool:
        nonlocal url
        for line in fake.log_path.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                url = line.removeprefix("listening on ").strip()
                return True
        return False

    fake.wait_ready(listening, timeout=30)
    return fake, url


def write_registry(bench: Bench) -> Path:
    """The gateway's registry for the benchmark models (format: README, "Registry format")."""
    max_concurrency = max(64, bench.args.concurrency)

    def provider(url: str) -> dict[str, Any]:
        # A literal key: a route whose provider has no key is never called.
        return {
            "type": "nanogpt",
            "base_url": url + "/v1",
            "api_key": UPSTREAM_KEY,
            "max_concurrency": max_concurrency,
            # The fake encodes base64 as OpenAI does, so the gateway asks it for base64
            # (a quarter of the bytes, no float parsing) unless --upstream-floats says not to.
            "returns_base64": not bench.args.upstream_floats,
        }

    def model(routes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": "Benchmark model",
            "description": "Served by a fake upstream on 127.0.0.1",
            "owned_by": "bench",
            "dimensions": bench.args.dims,
            "supports_dimensions": False,
            "max_tokens": 8191,
            "pricing": {"per_million_tokens": 0.02},
            "routes": routes,
        }

    registry = {
        "providers": {"main": provider(bench.main_url), "faulty": provider(bench.faulty_url)},
        "models": {
            "bench-small": model([{"provider": "main", "model": "bench-small"}]),
            "bench-large": model([{"provider": "main", "model": "bench-large"}]),
            # Failover at once on the first failure: with the default max_attempts (2) the
            # retry's backoff (0.1-0.2 s) would be what p99 measures, not the failover.
            "bench-failover": model(
                [
                    {"provider": "faulty", "model": "bench-failover", "max_attempts": 1},
                    {"provider": "main", "model": "bench-failover"},
                ]
            ),
        },
    }
    path = bench.workdir / "models.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


def start_gateway(bench: Bench, redis_url: str) -> Target:
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(16)
    env = {
        k: v
        for k, v in os.environ.items()
        # Settings the caller's shell might carry that would change what is measured.
        if k not in {"GATEWAY_INTERNAL_TOKEN", "TRUSTED_PROXIES", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKERS": "1",
            "MODELS_CONFIG": str(write_registry(bench)),
            "REDIS_URL": redis_url,
            "RATE_LIMIT_PER_SECOND": "1000000",  # on (one Redis script per request), never hit
            "GATEWAY_API_KEYS": key,
            "LOG_LEVEL": bench.args.gateway_log_level,
            "LOG_FORMAT": "json",
            "METRICS_ENABLED": "true",
            # Off by default: every input is unique, so the cache would only add misses; on
            # (--cache) it measures what a cache miss costs.
            "CACHE_ENABLED": "true" if bench.args.cache else "false",
            "REQUEST_TIMEOUT_SECONDS": "120",
            "PYTHONPATH": str(ROOT),
        }
    )
    gateway = Managed(
        "gateway",
        [sys.executable, "-m", "app.cli"],  # what the `embeddings-gateway` script runs
        log_path=bench.workdir / "gateway.log",
        env=env,
        cwd=bench.workdir,  # no .env from the repository or the caller's directory
    ).start()
    url = f"http://127.0.0.1:{port}"
    # /readyz: the registry is loaded and Redis answers.
    gateway.wait_ready(lambda: http_ok(url + "/readyz"), timeout=60)
    return Target("gateway", url + "/v1/embeddings", [f"Authorization: Bearer {key}"], gateway)
