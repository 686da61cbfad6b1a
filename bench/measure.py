"""Measuring one target under one scenario: a checked first answer, then load from a child.

The load generator (bench/loadgen.py) runs in its own process, so its CPU is not the target's;
CPU and memory come from /proc for the target's whole process tree (bench/procs.py).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from bench import procs
from bench.loadgen import make_body
from bench.procs import Managed, run_bounded
from bench.session import ROOT, Bench, Result, Scenario, Target, log


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
