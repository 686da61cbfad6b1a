"""The printed report: Markdown tables of results and of ratios between targets."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.session import Result

# How the report names a peer's target (bench/peers), in the ratio table and the targets.
PEER_LABELS = {
    "nginx": "nginx",
    "stack-floor": "stack floor",
    "portkey": "Portkey",
    "litellm": "LiteLLM",
    "infinity": "Infinity",
}
# Scenarios whose `direct` row is the local model fed batches in process: sentences/s, a
# batch's latency, no server's memory.
IN_PROCESS = ("local", "local-bulk")


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def results_table(results: list[Result]) -> str:
    # local's `direct` is a batch's latency, not a request's: nothing to subtract.
    direct = {
        r.scenario: r for r in results if r.target == "direct" and r.scenario not in IN_PROCESS
    }
    rows = []
    for r in results:
        base = direct.get(r.scenario)
        added = "—" if r.target == "direct" or base is None else f"{r.p50_ms - base.p50_ms:.2f}"
        per_call = r.calls_per_request
        memory = r.scenario in IN_PROCESS and r.target == "direct"  # not a server
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
                "—" if per_call is None else f"{per_call:.3f}",
                "—" if memory else f"{r.rss_start_mb:.0f} → {r.rss_end_mb:.0f}",
                "—" if memory else f"{r.peak_rss_mb:.0f}",
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
        "upstream calls/req",
        "RSS MB start → end",
        "peak RSS MB",
    ]
    return markdown(header, rows)


def ratio_table(results: list[Result]) -> str:
    by = {(r.scenario, r.target): r for r in results}
    peers = [p for p in PEER_LABELS if any(r.target == p for r in results)]

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}" if b else "—"

    rows = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        gw = by.get((scenario, "gateway"))
        # local-bulk's gateway row counts requests of thousands of sentences, its direct row
        # sentences: the targets report compares them.
        if gw is None or scenario == "local-bulk":
            continue
        direct = by.get((scenario, "direct"))
        row = [
            scenario,
            ratio(gw.rps, direct.rps if direct else None),
            ratio(gw.p50_ms, direct.p50_ms if direct and scenario not in IN_PROCESS else None),
        ]
        for name in peers:
            peer = by.get((scenario, name))
            row.append(ratio(gw.rps, peer.rps if peer else None))
            row.append(ratio(gw.cpu_ms_per_request, peer.cpu_ms_per_request if peer else None))
        if any(cell != "—" for cell in row[1:]):  # paced has the gateway alone
            rows.append(row)
    header = ["scenario", "gateway/direct req/s", "gateway/direct p50"]
    for name in peers:
        header += [f"gateway/{PEER_LABELS[name]} req/s", f"gateway/{PEER_LABELS[name]} CPU/req"]
    return markdown(header, rows)


def targets_report(
    results: list[Result], paced_limit: float, local_batch: int, bulk_inputs: int = 0
) -> str:
    """The figures the throughput issue sets targets for, each with its target and verdict."""
    by = {(r.scenario, r.target): r for r in results}

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    lines = ["Throughput targets (micro-batching, pacing, local model):"]
    batching = by.get(("batching", "gateway"))
    if batching is not None and batching.calls_per_request is not None:
        per = batching.calls_per_request
        wrong, checked = batching.vectors_wrong or 0, batching.vectors_checked or 0
        lines.append(
            f"- batching: {per:.3f} upstream calls per client request (target ≤ 0.125: "
            f"{verdict(per <= 0.125)}); vectors {checked - wrong} of {checked} exact"
            + (f", {wrong} WRONG" if wrong else "")
        )
    paced = by.get(("paced", "gateway"))
    if paced is not None and paced_limit:
        times = paced.ok_rps / paced_limit
        ok = times >= 5 and paced.errors == 0
        lines.append(
            f"- paced: {paced.ok_rps:.1f} client req/s answered 200 = {times:.2f} x the "
            f"upstream's {paced_limit:g} calls/s; {paced.errors} client errors of "
            f"{paced.completed} (target ≥ 5 x with 0 errors: {verdict(ok)})"
        )
    local_gw, local_direct = by.get(("local", "gateway")), by.get(("local", "direct"))
    if local_gw is not None and local_direct is not None and local_direct.rps:
        share = local_gw.rps / local_direct.rps
        lines.append(
            f"- local: {local_gw.rps:.1f} req/s through the gateway vs {local_direct.rps:.1f} "
            f"sentences/s in batches of {local_batch} = {share:.2f} (target ≥ 0.8: "
            f"{verdict(share >= 0.8)})"
        )
    infinity = by.get(("local", "infinity"))
    if local_gw is not None and infinity is not None and infinity.ok_rps:
        share = local_gw.ok_rps / infinity.ok_rps
        lines.append(
            f"- local vs Infinity: {local_gw.ok_rps:.1f} vs {infinity.ok_rps:.1f} single-sentence "
            f"req/s = {share:.2f} (target ≥ 1.0: {verdict(share >= 1.0)})"
        )
    bulk, bare = by.get(("local-bulk", "gateway")), by.get(("local-bulk", "direct"))
    if bulk is not None and bare is not None and bare.rps:
        sentences = bulk.ok_rps * bulk_inputs
        share = sentences / bare.rps
        # CPU per sentence says what wall time cannot on a shared machine: whether the
        # gateway does more work per sentence, or only got fewer cycles while it ran.
        cpu = 1000 * bulk.cpu_s / max(1, bulk.ok * bulk_inputs)
        lines.append(
            f"- local-bulk: {sentences:.1f} sentences/s in requests of {bulk_inputs} vs "
            f"{bare.rps:.1f} from plain onnxruntime at batch {local_batch} = {share:.2f} "
            f"(target ≥ 0.9: {verdict(share >= 0.9)}); CPU ms per sentence {cpu:.2f} vs "
            f"{bare.cpu_ms_per_request:.2f}"
        )
    defaults = [r for r in results if r.scenario == "shipped-defaults"]
    if defaults:
        names = {"direct": "direct upstream", "gateway": "gateway", **PEER_LABELS}
        cpu = ", ".join(
            f"{names.get(r.target, r.target)} {r.cpu_ms_per_request:.3f}" for r in defaults
        )
        lines.append(f"- shipped-defaults, CPU ms per request: {cpu}")
    return "\n".join(lines)


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"
