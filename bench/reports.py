"""The printed report: Markdown tables of results and of ratios between targets."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.session import TARGETS, Result


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
