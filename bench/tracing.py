"""What tracing costs: beside the untraced gateway, one gateway per sampling ratio, each
exporting OTLP/HTTP to its own sink (tests/otlp_receiver.py in a process of its own, so the
sink's decoding is not the gateway's CPU), measured under the same load, scenario by scenario.

    python bench/run.py --tracing 0.1,1      # parentbased_traceidratio at 10 % and 100 %
    python bench/run.py --tracing off,0.1,1 --rounds 7 --only small-float,batching
                                             # only these gateways, 7 times each in turn;
                                             # `off`: a second untraced one, as a control

The targets are named `gateway+trace0.1` and so on; the report gives each one's CPU per request
against the untraced gateway's, and what the sinks received.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

from bench.procs import Managed
from bench.servers import start_gateway
from bench.session import ROOT, Bench, Result, Target

# The exporter's default delay: at the end, what is still queued has left within it.
EXPORT_DELAY_SECONDS = 5.0


def ratios(text: str) -> list[float | None]:
    """`0.1,1`; `off` is an untraced gateway more, a control for the comparison itself."""
    try:
        found = [
            None if part.strip() == "off" else float(part)
            for part in text.split(",")
            if part.strip()
        ]
    except ValueError:
        found = []
    if not found or not all(ratio is None or 0.0 <= ratio <= 1.0 for ratio in found):
        raise argparse.ArgumentTypeError("sampling ratios from 0 to 1 or off, e.g. off,0.1,1")
    return found


def target_name(ratio: float | None) -> str:
    return "gateway+control" if ratio is None else f"gateway+trace{ratio:g}"


def start_traced(bench: Bench, redis_url: str) -> None:
    """One traced gateway per ratio of `--tracing`, each with its sink (`off`: an untraced
    one more, whose difference from the first is what the comparison's noise alone makes)."""
    for ratio in bench.args.tracing:
        name = target_name(ratio)
        if ratio is None:
            bench.traced.append(start_gateway(bench, redis_url, name=name))
            continue
        url = bench.sinks.get(name) or start_sink(bench, f"otlp-sink-{ratio:g}")
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            # The production setting docs/tracing.md recommends, at this ratio.
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(ratio),
            "OTEL_SERVICE_NAME": name,
        }
        bench.traced.append(start_gateway(bench, redis_url, name=name, extra=env))
        bench.sinks[name] = url


def restart_gateways(bench: Bench, redis_url: str) -> None:
    """Fresh processes for the untraced gateway and every traced one (the sinks stay): two
    identical gateway processes differ by up to ~15 % in CPU per request here, for as long as
    they run (memory layout, hash seeds, which core), so each round gets new ones."""
    assert bench.gateway is not None
    for target in (bench.gateway, *bench.traced):
        target.process.stop()
    bench.traced.clear()
    bench.gateway = start_gateway(bench, redis_url)
    start_traced(bench, redis_url)


def start_sink(bench: Bench, name: str) -> str:
    """A sink's URL, once it listens."""
    sink = Managed(
        name,
        [sys.executable, "-m", "tests.otlp_receiver"],
        log_path=bench.workdir / f"{name}.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    url = ""

    def listening() -> bool:
        nonlocal url
        for line in sink.log_path.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                url = line.removeprefix("listening on ").strip()
                return True
        return False

    sink.wait_ready(listening, timeout=30)
    return url


def sink_spans(url: str) -> int:
    with urllib.request.urlopen(url + "/stats", timeout=10) as response:
        return int(json.loads(response.read())["spans"])


def tracing_report(bench: Bench) -> str:
    """CPU per request of each traced gateway against the untraced one, scenario by scenario,
    then what each sink received and whether any span was dropped on the way."""
    results: list[Result] = bench.results
    by = {(r.scenario, r.target): r for r in results}
    traced = [t.name for t in bench.traced]
    lines = [
        "Tracing (parentbased_traceidratio; CPU ms per request, and its growth over the "
        "untraced gateway):",
        "",
        "| scenario | gateway | " + " | ".join(traced) + " |",
        "|---|---|" + "---|" * len(traced),
    ]
    for scenario in dict.fromkeys(r.scenario for r in results):
        base = by.get((scenario, "gateway"))
        if base is None or not base.cpu_ms_per_request:
            continue
        cells = [f"{base.cpu_ms_per_request:.3f}"]
        for name in traced:
            result = by.get((scenario, name))
            if result is None:
                cells.append("—")
                continue
            growth = 100 * (result.cpu_ms_per_request / base.cpu_ms_per_request - 1)
            cells.append(f"{result.cpu_ms_per_request:.3f} ({growth:+.1f} %)")
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    time.sleep(EXPORT_DELAY_SECONDS + 1)
    lines.append("")
    for target in bench.traced:
        if target.name not in bench.sinks:
            continue
        served = sum(r.completed for r in results if r.target == target.name)
        spans = sink_spans(bench.sinks[target.name])
        dropped = _dropped_warnings(target)
        lines.append(
            f"- {target.name}: {spans} spans received for {served} measured requests (and the "
            f"warm-ups); {dropped} 'Queue full' warnings in its log"
        )
    return "\n".join(lines)


def rounds_report(bench: Bench) -> str:
    """For `--rounds`: each gateway's median CPU per request over the rounds (and its range),
    and each traced one's growth over the untraced one's median."""
    names = ["gateway", *(t.name for t in bench.traced)]
    lines = [
        "CPU ms per request, median over the rounds [lowest-highest], and growth over the "
        "untraced gateway's median:",
        "",
        "| scenario | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for scenario in dict.fromkeys(r.scenario for r in bench.results):
        medians: dict[str, float] = {}
        cells = []
        for name in names:
            values = [
                r.cpu_ms_per_request
                for r in bench.results
                if r.scenario == scenario and r.target == name and r.completed
            ]
            if not values:
                cells.append("—")
                continue
            medians[name] = median = statistics.median(values)
            cell = f"{median:.3f} [{min(values):.3f}-{max(values):.3f}]"
            base = medians.get("gateway")
            if name != "gateway" and base:
                cell += f" ({100 * (median / base - 1):+.1f} %)"
            cells.append(cell)
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dropped_warnings(target: Target) -> int:
    text = target.process.log_path.read_text(errors="replace")
    return text.count("Queue full")
