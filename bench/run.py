#!/usr/bin/env python
"""Benchmark the gateway against its own upstream (and, with --litellm, LiteLLM's proxy).

One command starts everything on 127.0.0.1 -- a redis-server (no persistence), fast fake
upstreams (bench/fake_server.py), the gateway as `embeddings-gateway` would run it (one worker,
Redis rate limiting on with a limit too high to trigger) and, if asked, LiteLLM's proxy from
its own venv -- then drives each target with the same closed-loop load from a separate process
(bench/loadgen.py) and prints one table: req/s, latency, latency added over the upstream, CPU
seconds and peak RSS of the target's process tree, and the ratios between targets.

    python bench/run.py                   # every scenario, 10 s each, concurrency 16
    python bench/run.py --litellm         # ... and LiteLLM (installed on first use)
    python bench/run.py --quick           # CI: ~1.5 s per scenario, tiny load
    python bench/run.py --soak 60         # small requests for 60 s: RSS at start and end
    python bench/run.py --profile DIR     # ... then py-spy the gateway (--profile-scenario)

Every child runs in its own process group and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# `python bench/run.py` puts bench/ (not the repository) first on sys.path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench import procs  # noqa: E402
from bench.loadgen import make_body  # noqa: E402
from bench.procs import Managed, free_port, run_bounded  # noqa: E402

LITELLM_VENV = BENCH / ".venv-litellm"
UPSTREAM_KEY = "bench-upstream-key"
TARGETS = ("direct", "gateway", "litellm")
SCENARIO_NAMES = ("latency", "small-float", "small-base64", "failover", "large-base64")


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    inputs: int  # 0: one string input; N: a list of N strings
    encoding_format: str
    concurrency: int
    faulty_upstream: bool = False  # `direct` is then the upstream that fails 10 % of the time

    @property
    def vectors(self) -> int:
        return max(self.inputs, 1)


@dataclass
class Target:
    name: str
    url: str  # the embeddings endpoint
    headers: list[str]
    process: Managed  # whose CPU and memory are measured


@dataclass
class Result:
    scenario: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    completed: int
    errors: int
    cpu_s: float
    rss_start_mb: float
    rss_end_mb: float
    peak_rss_mb: float
    loadgen_cpu_s: float
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.completed if self.completed else 0.0


@dataclass
class Bench:
    """Everything started for one run, and the settings every scenario shares."""

    args: argparse.Namespace
    workdir: Path
    main_fake: Managed | None = None
    faulty_fake: Managed | None = None
    main_url: str = ""
    faulty_url: str = ""
    gateway: Target | None = None
    litellm: Target | None = None
    results: list[Result] = field(default_factory=list)

    def targets(self, scenario: Scenario) -> list[Target]:
        assert self.main_fake is not None and self.faulty_fake is not None
        upstream_url, upstream = (
            (self.faulty_url, self.faulty_fake)
            if scenario.faulty_upstream
            else (self.main_url, self.main_fake)
        )
        direct = Target(
            "direct",
            upstream_url + "/v1/embeddings",
            [f"Authorization: Bearer {UPSTREAM_KEY}"],
            upstream,
        )
        return [t for t in (direct, self.gateway, self.litellm) if t is not None]


def log(message: str) -> None:
    # Progress goes to stderr; stdout carries only the report (the smoke test parses it).
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Starting the servers
# ---------------------------------------------------------------------------------------------


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


def ensure_litellm(bench: Bench) -> Path:
    """LiteLLM's proxy in its own venv (bench/.venv-litellm), installed once."""
    spec = bench.args.litellm_spec
    binary = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / ".bench-installed"
    if binary.exists() and marker.exists() and marker.read_text().strip() == spec:
        return binary
    log(f"installing {spec} into {LITELLM_VENV} (once; a few minutes)...")
    python = LITELLM_VENV / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", spec],
    ]
    for number, argv in enumerate(steps):
        step = Managed(f"litellm-install-{number}", argv, log_path=bench.workdir / "pip.log")
        if run_bounded(step, timeout=bench.args.install_timeout) != 0:
            raise RuntimeError(f"installing LiteLLM failed:\n{step.log_tail()}")
    marker.write_text(spec + "\n")
    return binary


def start_litellm(bench: Bench) -> Target:
    binary = ensure_litellm(bench)
    template = string.Template((BENCH / "litellm_config.yaml").read_text())
    config = bench.workdir / "litellm_config.yaml"
    config.write_text(
        template.substitute(
            MAIN_URL=bench.main_url, FAULTY_URL=bench.faulty_url, UPSTREAM_KEY=UPSTREAM_KEY
        )
    )
    port = free_port()
    key = "sk-" + secrets.token_hex(24)  # LiteLLM refuses its well-known default key
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PYTHONPATH"}}
    env.update(
        {
            "LITELLM_MASTER_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start-up
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    proxy = Managed(
        "litellm",
        [
            str(binary),
            "--config", str(config),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--num_workers", "1",
        ],
        log_path=bench.workdir / "litellm.log",
        env=env,
        cwd=bench.workdir,
    ).start()  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proxy.wait_ready(lambda: http_ok(url + "/health/liveliness"), timeout=180)
    return Target("litellm", url + "/v1/embeddings", [f"Authorization: Bearer {key}"], proxy)


# ---------------------------------------------------------------------------------------------
# Checking and loading the targets
# ---------------------------------------------------------------------------------------------


def check_answer(target: Target, scenario: Scenario, dims: int) -> None:
    """One request, fully checked, before any load: a wrong setup fails loudly, not as numbers."""
    body = make_body("check", 0, scenario.model, scenario.inputs, scenario.encoding_format)
    headers = {"Content-Type": "application/json"}
    for header in target.headers:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    # The faulty upstream answers 500 to one request in ten: try a few times.
    for attempt in range(10):
        request = urllib.request.Request(target.url, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                payload = json.loads(response.read())
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == 9:
                detail = exc.read()[:300].decode(errors="replace")
                raise RuntimeError(
                    f"{target.name} answered {exc.code} for {scenario.name}: {detail}"
                ) from None
    data = payload["data"]
    if len(data) != scenario.vectors:
        raise RuntimeError(f"{target.name}: {len(data)} vectors for {scenario.vectors} inputs")
    for item in (data[0], data[-1]):
        vector = item["embedding"]
        width = len(base64.b64decode(vector)) // 4 if isinstance(vector, str) else len(vector)
        wanted_type = str if scenario.encoding_format == "base64" else list
        if width != dims or not isinstance(vector, wanted_type):
            raise RuntimeError(f"{target.name}: bad vector for {scenario.name}: width {width}")


def loadgen(
    bench: Bench,
    target: Target,
    scenario: Scenario,
    name: str,
    *,
    requests: int,
    duration: float,
    tick: Any = None,
) -> dict[str, Any]:
    out = bench.workdir / f"{name}.json"
    argv = [
        sys.executable, "-m", "bench.loadgen",
        "--url", target.url,
        "--model", scenario.model,
        "--inputs", str(scenario.inputs),
        "--encoding-format", scenario.encoding_format,
        "--concurrency", str(scenario.concurrency),
        "--requests", str(requests),
        "--duration", str(duration),
        "--timeout", str(bench.args.request_timeout),
        "--out", str(out),
    ]  # fmt: skip
    for header in target.headers:
        argv += ["--header", header]
    child = Managed(
        f"loadgen {name}",
        argv,
        log_path=bench.workdir / f"{name}.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # Bounded twice: the load's own limits, and this hard stop should it hang.
    timeout = duration + bench.args.request_timeout + 60
    if run_bounded(child, timeout=timeout, tick=tick) != 0 or not out.exists():
        raise RuntimeError(f"load generator failed:\n{child.log_tail()}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def measure(bench: Bench, target: Target, scenario: Scenario) -> Result:
    args = bench.args
    pid = target.process.pid
    tag = f"{scenario.name}-{target.name}"
    # Warm-up: connections, the fake's per-text cache, lazy imports and first-call costs.
    warmup = max(2 * scenario.concurrency, 4 if scenario.inputs > 100 else 20)
    loadgen(bench, target, scenario, f"{tag}-warmup", requests=warmup, duration=60)

    rss_start = sampled_peak = procs.rss_mb(pid)
    hwm_reset = procs.reset_peak_rss(pid)

    def sample() -> None:
        nonlocal sampled_peak
        sampled_peak = max(sampled_peak, procs.rss_mb(pid))

    cpu_before = procs.cpu_seconds(pid)
    load = loadgen(
        bench,
        target,
        scenario,
        tag,
        requests=args.requests or 10_000_000,
        duration=args.duration,
        tick=sample,
    )
    cpu = procs.cpu_seconds(pid) - cpu_before
    rss_end = procs.rss_mb(pid)
    sample()
    # VmHWM catches peaks between samples, but only if it could be reset for this scenario.
    peak = max(sampled_peak, procs.peak_rss_mb(pid)) if hwm_reset else sampled_peak
    result = Result(
        scenario=scenario.name,
        target=target.name,
        rps=load["rps"],
        p50_ms=load["latency_ms"]["p50"],
        p99_ms=load["latency_ms"]["p99"],
        completed=load["completed"],
        errors=load["errors"],
        cpu_s=cpu,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        peak_rss_mb=peak,
        loadgen_cpu_s=load["loadgen_cpu_s"],
        statuses=load["statuses"],
    )
    log(
        f"  {scenario.name:<13} {target.name:<8} {result.rps:8.1f} req/s  "
        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
    )
    return result


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def results_table(results: list[Result]) -> str:
    direct = {r.scenario: r for r in results if r.target == "direct"}
    rows = []
    for r in results:
        base = direct.get(r.scenario)
        added = "—" if r.target == "direct" or base is None else f"{r.p50_ms - base.p50_ms:.2f}"
        rows.append(
            [
                r.scenario,
                r.target,
                f"{r.rps:.1f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                added,
                f"{r.errors}/{r.completed}",
                f"{r.cpu_s:.2f}",
                f"{r.cpu_ms_per_request:.3f}",
                f"{r.rss_start_mb:.0f} → {r.rss_end_mb:.0f}",
                f"{r.peak_rss_mb:.0f}",
            ]
        )
    header = [
        "scenario",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "errors",
        "CPU s",
        "CPU ms/req",
        "RSS MB start → end",
        "peak RSS MB",
    ]
    return markdown(header, rows)


def ratio_table(results: list[Result]) -> str:
    by = {(r.scenario, r.target): r for r in results}
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        direct, gw, lite = (by.get((scenario, t)) for t in TARGETS)
        if gw is None:
            continue

        def ratio(a: float, b: float | None) -> str:
            return f"{a / b:.2f}" if b else "—"

        rows.append(
            [
                scenario,
                ratio(gw.rps, direct.rps if direct else None),
                ratio(gw.p50_ms, direct.p50_ms if direct else None),
                ratio(gw.rps, lite.rps if lite else None),
                ratio(gw.p50_ms, lite.p50_ms if lite else None),
                ratio(gw.cpu_ms_per_request, lite.cpu_ms_per_request if lite else None),
                ratio(gw.peak_rss_mb, lite.peak_rss_mb if lite else None),
            ]
        )
    header = [
        "scenario",
        "gateway/direct req/s",
        "gateway/direct p50",
        "gateway/LiteLLM req/s",
        "gateway/LiteLLM p50",
        "gateway/LiteLLM CPU/req",
        "gateway/LiteLLM RSS",
    ]
    return markdown(header, rows)


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"


# ---------------------------------------------------------------------------------------------
# Modes: the scenario table, the soak, the profile
# ---------------------------------------------------------------------------------------------


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    c = args.concurrency
    large = Scenario(
        "large-base64", "bench-large", args.large_inputs, "base64", min(c, args.large_concurrency)
    )
    # Large last: memory a process has touched stays resident, so the small scenarios would
    # otherwise report the large one's peak as theirs.
    plan = [
        # One request at a time: the latency the gateway adds, with no queueing in it.
        Scenario("latency", "bench-small", 0, "float", 1),
        Scenario("small-float", "bench-small", 0, "float", c),
        Scenario("small-base64", "bench-small", 0, "base64", c),
        Scenario("failover", "bench-failover", 0, "float", c, faulty_upstream=True),
        *([large] if args.large_inputs > 0 else []),
    ]
    return [s for s in plan if not args.only or s.name in args.only]


def run_table(bench: Bench) -> None:
    args = bench.args
    log(f"loading each target for {args.duration:g} s per scenario")
    for scenario in scenarios(args):
        for target in bench.targets(scenario):
            # Checked just before its own load, so no earlier scenario's memory shows up here.
            check_answer(target, scenario, args.dims)
            bench.results.append(measure(bench, target, scenario))

    print(f"\nEmbeddings gateway benchmark — {machine()}")
    limit = f", at most {args.requests} requests" if args.requests else ""
    print(
        f"closed loop, concurrency {args.concurrency} (latency: 1; large-base64: "
        f"{min(args.concurrency, args.large_concurrency)}, {args.large_inputs} inputs), "
        f"{args.duration:g} s per scenario and target{limit}, {args.dims} dims; gateway: "
        f"1 worker, Redis rate limiting on, cache {'on' if args.cache else 'off'}, upstream "
        f"asked for {'floats' if args.upstream_floats else 'base64'}\n"
    )
    print(results_table(bench.results))
    print()
    print(ratio_table(bench.results))
    print(
        "\nCPU s and peak RSS are the target's own process tree (for `direct`, the fake upstream"
        "); `errors` counts non-200 answers (the failover upstream fails 10 % on purpose)."
    )


def run_soak(bench: Bench) -> None:
    assert bench.gateway is not None
    args = bench.args
    scenario = Scenario("small-float", "bench-small", 0, "float", args.concurrency)
    check_answer(bench.gateway, scenario, args.dims)
    pid = bench.gateway.process.pid
    loadgen(bench, bench.gateway, scenario, "soak-warmup", requests=500, duration=30)
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    def sample() -> None:
        if not samples or time.monotonic() - start - samples[-1][0] >= 1.0:
            samples.append((time.monotonic() - start, procs.rss_mb(pid)))

    sample()
    cpu_before = procs.cpu_seconds(pid)
    load = loadgen(
        bench,
        bench.gateway,
        scenario,
        "soak",
        requests=args.requests or 100_000_000,
        duration=args.soak,
        tick=sample,
    )
    cpu = procs.cpu_seconds(pid) - cpu_before
    samples.append((time.monotonic() - start, procs.rss_mb(pid)))
    first, last = samples[0][1], samples[-1][1]
    print(f"\nSoak: small-float against the gateway for {args.soak:g} s — {machine()}")
    print(
        f"{load['completed']} requests ({load['rps']:.1f} req/s, errors {load['errors']}), "
        f"p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms, "
        f"gateway CPU {cpu:.1f} s"
    )
    step = max(1, len(samples) // 6)
    shown = samples[::step] + ([] if (len(samples) - 1) % step == 0 else samples[-1:])
    series = ", ".join(f"{t:.0f}s {mb:.1f}" for t, mb in shown)
    print(f"gateway RSS MB: {series}")
    print(
        f"RSS start {first:.1f} MB, end {last:.1f} MB, change {last - first:+.1f} MB "
        f"({100 * (last - first) / first:+.1f} %), max {max(mb for _, mb in samples):.1f} MB"
    )


def run_profile(bench: Bench) -> None:
    """py-spy the gateway under one scenario's load: a flame graph and a text summary."""
    from bench.pyspy import summarize

    assert bench.gateway is not None
    args = bench.args
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        log("installing py-spy into this venv")
        pip = Managed(
            "pip install py-spy",
            [sys.executable, "-m", "pip", "install", "-q", "py-spy"],
            log_path=bench.workdir / "pip-py-spy.log",
        )
        if run_bounded(pip, timeout=bench.args.install_timeout) != 0:
            raise RuntimeError(f"could not install py-spy:\n{pip.log_tail()}")
    out = Path(args.profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scenario = next(s for s in scenarios(args) if s.name == args.profile_scenario)
    seconds = args.profile_seconds
    pid = bench.gateway.process.pid
    warmup = 4 if scenario.inputs > 100 else 500
    loadgen(bench, bench.gateway, scenario, "profile-warmup", requests=warmup, duration=60)
    # One load long enough for both recordings; py-spy attaches once it is running.
    load = Managed(
        "loadgen profile",
        [
            sys.executable, "-m", "bench.loadgen",
            "--url", bench.gateway.url,
            "--model", scenario.model,
            "--inputs", str(scenario.inputs),
            "--encoding-format", scenario.encoding_format,
            "--concurrency", str(scenario.concurrency),
            "--timeout", str(args.request_timeout),
            "--requests", "100000000",
            "--duration", str(2 * seconds + 4),
            "--out", str(bench.workdir / "profile-load.json"),
            *[x for h in bench.gateway.headers for x in ("--header", h)],
        ],
        log_path=bench.workdir / "profile-load.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()  # fmt: skip
    try:
        time.sleep(1)
        name = f"gateway-{scenario.name}"
        recordings = (("raw", f"{name}.txt"), ("flamegraph", f"{name}.svg"))
        for fmt, filename in recordings:
            spy = Managed(
                f"py-spy {fmt}",
                [
                    str(py_spy), "record",
                    "--pid", str(pid),
                    "--duration", str(max(1, round(seconds))),
                    "--rate", "200",
                    "--format", fmt,
                    "--nolineno",
                    "--output", str(out / filename),
                ],
                log_path=bench.workdir / f"py-spy-{fmt}.log",
            )  # fmt: skip
            if run_bounded(spy, timeout=seconds + 60) != 0:
                raise RuntimeError(f"py-spy failed (root, or ptrace allowed?):\n{spy.log_tail()}")
        assert load.proc is not None
        load.proc.wait(timeout=seconds + args.request_timeout + 60)
    finally:
        load.stop()
    summary = summarize((out / f"{name}.txt").read_text())
    (out / f"{name}-summary.txt").write_text(summary + "\n")
    print(f"\nProfile of the gateway under {scenario.name} load ({seconds:g} s, py-spy, 200 Hz)")
    print(f"flame graph: {out / (name + '.svg')}\n{summary}")


def run_micro(bench: Bench) -> None:
    args = bench.args
    rows, repeat = (128, 2) if args.quick else (2048, 5)
    child = Managed(
        "micro-benchmark",
        [
            sys.executable, "-m", "bench.encoding",
            "--rows", str(rows),
            "--dims", str(args.dims),
            "--repeat", str(repeat),
        ],
        log_path=bench.workdir / "micro.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if run_bounded(child, timeout=600) != 0:
        raise RuntimeError(f"micro-benchmark failed:\n{child.log_tail()}")
    print("\n" + child.log_path.read_text().strip())


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per scenario and target (10; --quick: 1.5)"
    )
    parser.add_argument(
        "--requests", type=int, default=0, help="stop each load after N requests (or --duration)"
    )
    parser.add_argument("--concurrency", type=int, help="requests in flight (16; --quick: 4)")
    parser.add_argument(
        "--large-inputs", type=int, help="inputs per large request (2048; 0 skips the scenario)"
    )
    parser.add_argument(
        "--large-concurrency", type=int, default=2, help="cap on in-flight large requests (2)"
    )
    parser.add_argument("--dims", type=int, default=1536, help="vector width of every model")
    parser.add_argument("--quick", action="store_true", help="CI: ~1.5 s per scenario, tiny load")
    parser.add_argument("--litellm", action="store_true", help="also benchmark LiteLLM's proxy")
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs")
    parser.add_argument("--install-timeout", type=float, default=1200)
    parser.add_argument("--cache", action="store_true", help="leave the gateway's cache on")
    parser.add_argument(
        "--upstream-floats",
        action="store_true",
        help="registry: returns_base64 off, so the gateway asks its upstreams for floats",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        metavar="NAMES",
        help=f"comma-separated scenarios to run, of: {', '.join(SCENARIO_NAMES)}",
    )
    parser.add_argument(
        "--gateway-log-level", default="info", help="the gateway's LOG_LEVEL (info: access lines)"
    )
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds per request")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="only: soak the gateway")
    parser.add_argument("--profile", metavar="DIR", help="also py-spy the gateway; output in DIR")
    parser.add_argument("--profile-seconds", type=float, default=10)
    parser.add_argument("--profile-scenario", default="small-float", choices=SCENARIO_NAMES)
    parser.add_argument("--no-micro", action="store_true", help="skip the encoding micro-bench")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        # With --requests alone the count decides; the time cap is only there as a bound.
        args.duration = 600.0 if args.requests else 1.5 if quick else 10.0
    if args.concurrency is None:
        args.concurrency = 4 if quick else 16
    if args.large_inputs is None:
        args.large_inputs = 64 if quick else 2048
    if not 0 <= args.large_inputs <= 2048:
        parser.error("--large-inputs must be within 0..2048 (the gateway's batch limit)")
    if args.profile_scenario == "large-base64" and args.large_inputs == 0:
        parser.error("--profile-scenario large-base64 needs --large-inputs > 0")
    unknown = set(args.only or ()) - set(SCENARIO_NAMES)
    if unknown:
        parser.error(f"--only: unknown scenarios {sorted(unknown)}; known: {SCENARIO_NAMES}")
    if args.profile and args.only and args.profile_scenario not in args.only:
        args.only.append(args.profile_scenario)  # it is profiled after being measured
    if args.duration <= 0 or args.concurrency < 1 or args.large_concurrency < 1:
        parser.error("--duration, --concurrency and --large-concurrency must be positive")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The report (stdout) and progress (stderr) interleave in order even through a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C, through the `finally` below.
    signal.signal(signal.SIGTERM, _interrupt)
    # Even when started with SIGINT ignored (`cmd &` in a script), Ctrl-C / kill -INT stops it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="egw-bench-"))
    bench = Bench(args, workdir)
    failed = True
    try:
        if not args.no_micro and args.soak is None:
            run_micro(bench)  # before any server starts, on an idle machine
        log(f"starting redis-server, fake upstreams and the gateway (logs in {workdir})")
        redis_url = start_redis(bench)
        bench.main_fake, bench.main_url = start_fake(bench, "fake-main", 0.0)
        bench.faulty_fake, bench.faulty_url = start_fake(bench, "fake-faulty", 0.1)
        bench.gateway = start_gateway(bench, redis_url)
        if args.soak is not None:
            run_soak(bench)
        else:
            if args.litellm:
                log("starting LiteLLM's proxy")
                bench.litellm = start_litellm(bench)
            run_table(bench)
            if args.profile:
                run_profile(bench)
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in bench.results], indent=2))
        failed = False
        # A target that never answered 200 is broken, not slow: say so in the exit status.
        broken = [f"{r.scenario}/{r.target}" for r in bench.results if r.completed == r.errors]
        if broken:
            log(f"no successful request for: {', '.join(broken)}")
            return 1
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        procs.stop_all()
        if failed or args.keep:
            log(f"logs and configs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
