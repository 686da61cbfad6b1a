"""Tail-latency benchmark of routing: failover time with the shipped defaults, and the p99 of a
two-route model whose first route is sometimes slow, with hedging off and on.

Everything runs on 127.0.0.1: fake upstreams (tests/fakes, public interface only)
in this process, the gateway as its CLI (`python -m app.cli`) in a child process, and a
closed-loop client here. Every phase is bounded in requests and in seconds.

    python bench/tail_latency.py                   # about 40 s
    python bench/tail_latency.py --requests 1000 --json bench/out/tail.json

Phases:
- `failover`: the shipped config/models.yaml, NanoGPT hung (accepts, never answers):
  `--burst` concurrent requests for text-embedding-3-small, then sequential ones once the
  route is cooling down. Reported: seconds until each client had its vectors.
- `tail`: one model, two routes; a share `--slow-share` of the first route's calls take
  `--slow-seconds` (then answer normally), the second route is fast. The same load runs with
  hedging off, with hedge_after_ms 100, and with `auto`. Reported: latency percentiles,
  hedges sent and the extra upstream calls they cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# `python bench/tail_latency.py` puts bench/ (not the repository) first on sys.path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from tests.fakes import FakeUpstream, Fault  # noqa: E402

SHIPPED_MODEL = "text-embedding-3-small"
DIMS = 1536
UPSTREAM_KEY = "bench-upstream-key"
STARTUP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """`python -m app.cli` on a free loopback port, configured through its environment only."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.key = "sk-bench-" + secrets.token_hex(8)
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "GATEWAY_API_KEYS": self.key,
            "RATE_LIMIT_PER_SECOND": "0",
            "LOG_LEVEL": "error",
            **env,
        }
        self.env.pop("REDIS_URL", None)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gateway:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli"],
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"gateway did not start in {STARTUP_SECONDS} s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


async def closed_loop(
    url: str, key: str, model: str, *, requests: int, concurrency: int, seconds: float, tag: str
) -> dict[str, Any]:
    """`requests` requests (unique inputs) from `concurrency` workers, stopping at `seconds`."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))
    stop_at = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for n in counter:
                if time.monotonic() > stop_at:
                    return
                body = json.dumps({"model": model, "input": f"{tag} request {n}"})
                started = time.perf_counter()
                async with session.post(f"{url}/v1/embeddings", data=body, headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {"requests": len(latencies), "statuses": statuses, **percentiles(latencies)}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    def at(q: float) -> float:
        if not values:
            return 0.0
        return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))] * 1000

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": at(1.0)}


def failover_phase(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with (
        FakeUpstream("openai", api_key=UPSTREAM_KEY, dims={SHIPPED_MODEL: DIMS}) as nano,
        FakeUpstream("openai", api_key=UPSTREAM_KEY, dims={SHIPPED_MODEL: DIMS}) as aiml,
    ):
        nano.add_fault(Fault.hang(120), times=None)
        env = {
            "MODELS_CONFIG": str(ROOT / "config" / "models.yaml"),
            "NANOGPT_BASE_URL": nano.base_url,
            "NANOGPT_API_KEY": UPSTREAM_KEY,
            "AIML_BASE_URL": aiml.base_url,
            "AIML_API_KEY": UPSTREAM_KEY,
        }
        with Gateway(env, workdir / "failover-gateway.log") as gateway:
            burst = asyncio.run(
                closed_loop(
                    gateway.url,
                    gateway.key,
                    SHIPPED_MODEL,
                    requests=args.burst,
                    concurrency=args.burst,
                    seconds=90,
                    tag="burst",
                )
            )
            after = asyncio.run(
                closed_loop(
                    gateway.url,
                    gateway.key,
                    SHIPPED_MODEL,
                    requests=20,
                    concurrency=1,
                    seconds=30,
                    tag="after",
                )
            )
        nano.clear()  # ends the hangs
    return {"hung_route_burst": burst, "while_cooling_down": after}


def tail_registry(nano: FakeUpstream, aiml: FakeUpstream, path: Path) -> Path:
    def model(hedge: float | str) -> dict[str, Any]:
        return {
            "name": "Tail",
            "owned_by": "bench",
            "dimensions": DIMS,
            "max_tokens": 8191,
            "pricing": {"per_million_tokens": 0.02},
            "cache": False,
            "routes": [
                {"provider": "first", "model": SHIPPED_MODEL, "hedge_after_ms": hedge},
                {"provider": "second", "model": SHIPPED_MODEL},
            ],
        }

    registry = {
        "providers": {
            "first": {"type": "nanogpt", "base_url": nano.base_url, "api_key": UPSTREAM_KEY},
            "second": {"type": "aiml", "base_url": aiml.base_url, "api_key": UPSTREAM_KEY},
        },
        "models": {"tail-off": model(0), "tail-100ms": model(100), "tail-auto": model("auto")},
    }
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


def tail_phase(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        FakeUpstream("openai", api_key=UPSTREAM_KEY, dims={SHIPPED_MODEL: DIMS}) as first,
        FakeUpstream("openai", api_key=UPSTREAM_KEY, dims={SHIPPED_MODEL: DIMS}) as second,
    ):
        path = tail_registry(first, second, workdir / "tail-models.yaml")
        with Gateway({"MODELS_CONFIG": str(path)}, workdir / "tail-gateway.log") as gateway:
            for model in ("tail-off", "tail-100ms", "tail-auto"):
                first.clear()
                second.clear()
                first.set_fault_rate(Fault.hang(args.slow_seconds), args.slow_share, seed=1)
                hedges_before = gateway.metric(
                    "embeddings_gateway_hedged_calls_total", model=model, provider="second"
                )
                run = asyncio.run(
                    closed_loop(
                        gateway.url,
                        gateway.key,
                        model,
                        requests=args.requests,
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                        tag=model,
                    )
                )
                hedges = (
                    gateway.metric(
                        "embeddings_gateway_hedged_calls_total", model=model, provider="second"
                    )
                    - hedges_before
                )
                sent = len(first.embedding_requests()) + len(second.embedding_requests())
                run["hedges"] = int(hedges)
                run["upstream_calls"] = sent
                run["extra_calls_pct"] = 100 * (sent - run["requests"]) / max(1, run["requests"])
                results[model] = run
        first.clear()
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    failover = results["failover"]
    burst = failover["hung_route_burst"]
    after = failover["while_cooling_down"]
    print("\nFailover, shipped registry and defaults, first route hung:")
    print(
        f"  {burst['requests']} concurrent requests: statuses {burst['statuses']}, "
        f"vectors after p50 {burst['p50_ms'] / 1000:.2f} s, max {burst['max_ms'] / 1000:.2f} s"
    )
    print(
        f"  then, with the hung route cooling down: {after['requests']} requests, "
        f"p50 {after['p50_ms']:.1f} ms, max {after['max_ms']:.1f} ms"
    )
    print(
        f"\nTwo routes, {args.slow_share:.0%} of the first route's calls take "
        f"{args.slow_seconds:g} s; concurrency {args.concurrency}:"
    )
    print("| hedging | requests | p50 ms | p90 ms | p99 ms | max ms | hedges | extra calls |")
    print("|---|---|---|---|---|---|---|---|")
    for model, label in (("tail-off", "off"), ("tail-100ms", "100 ms"), ("tail-auto", "auto")):
        run = results["tail"][model]
        print(
            f"| {label} | {run['requests']} | {run['p50_ms']:.1f} | {run['p90_ms']:.1f} | "
            f"{run['p99_ms']:.1f} | {run['max_ms']:.1f} | {run['hedges']} | "
            f"{run['extra_calls_pct']:.1f} % |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per tail run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60, help="bound on each tail run")
    parser.add_argument("--slow-share", type=float, default=0.05)
    parser.add_argument("--slow-seconds", type=float, default=1.0)
    parser.add_argument("--burst", type=int, default=5, help="concurrent failover requests")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tail-bench-") as tmp:
        workdir = Path(tmp)
        results = {"failover": failover_phase(args, workdir), "tail": tail_phase(args, workdir)}
    report(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
