"""Measuring one target under one scenario: a checked first answer, then load from a child.

The load generator (bench/loadgen.py) runs in its own process, so its CPU is not the target's;
CPU and memory come from /proc for the target's whole process tree (bench/procs.py).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from bench import procs
from bench.loadgen import make_body
from bench.procs import Managed, run_bounded
from bench.servers import upstream_calls
from bench.session import ROOT, Bench, Result, Scenario, Target, log


def check_answer(target: Target, scenario: Scenario, dims: int) -> None:
    """One request, fully checked, before any load: a wrong setup fails loudly, not as numbers."""
    dims = scenario.dims or dims
    url, target_headers = target.endpoint(scenario.model)
    body = make_body("check", 0, scenario.model, scenario.inputs, scenario.encoding_format)
    headers = {"Content-Type": "application/json"}
    for header in target_headers:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    # The faulty upstream answers 500 to one request in ten: try a few times.
    for attempt in range(10):
        request = urllib.request.Request(url, data=body, headers=headers)
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
    url, headers = target.endpoint(scenario.model)
    argv = [
        sys.executable, "-m", "bench.loadgen",
        "--url", url,
        "--model", scenario.model,
        "--inputs", str(scenario.inputs),
        "--encoding-format", scenario.encoding_format,
        "--concurrency", str(scenario.concurrency),
        "--requests", str(requests),
        "--duration", str(duration),
        "--timeout", str(bench.args.request_timeout),
        "--out", str(out),
    ]  # fmt: skip
    if scenario.check_vectors:
        argv += ["--check-vectors", str(scenario.dims or bench.args.dims)]
    for header in headers:
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
    warmup = scenario.warmup or max(2 * scenario.concurrency, 4 if scenario.inputs > 100 else 20)
    loadgen(bench, target, scenario, f"{tag}-warmup", requests=warmup, duration=60)
    time.sleep(scenario.settle_seconds)

    calls_before = upstream_calls(bench) if scenario.upstream is not None else None
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
        requests=scenario.requests or args.requests or 10_000_000,
        duration=args.duration if scenario.requests is None else 600.0,
        tick=sample,
    )
    cpu = procs.cpu_seconds(pid) - cpu_before
    calls = None if calls_before is None else upstream_calls(bench) - calls_before
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
        ok=load["ok"],
        upstream_calls=calls,
        vectors_checked=load.get("vectors_checked"),
        vectors_wrong=load.get("vectors_wrong"),
    )
    per_call = result.calls_per_request
    log(
        f"  {scenario.name:<16} {target.name:<8} {result.rps:8.1f} req/s  "
        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
        + (f"  upstream calls/req {per_call:.3f}" if per_call is not None else "")
    )
    return result
