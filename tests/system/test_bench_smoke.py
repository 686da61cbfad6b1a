"""`python bench/run.py --quick` still runs end to end, so the benchmark cannot rot.

Timings depend on the machine and on whatever else runs beside it: nothing here asserts one.
It checks that the script exits 0, prints a row with numbers for every scenario and target
(the peers are opt-in, installed from npm and Debian, so not here), and that the throughput
targets are reported: upstream calls per request for batching (with every vector exact),
pacing's multiple and errors, and the local model's ratio.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.redis_server import available as redis_available

ROOT = Path(__file__).resolve().parents[2]
BOTH = ("direct", "gateway")
# Which targets each scenario measures without peers.
SCENARIOS = {
    "latency": BOTH,
    "small-float": BOTH,
    "small-base64": BOTH,
    "shipped-defaults": BOTH,
    "failover": BOTH,
    "batching": BOTH,
    "paced": ("gateway",),  # only the gateway is told the upstream's limit
    "large-base64": BOTH,
    "local": BOTH,  # direct: the ONNX session fed batches in process
    "local-bulk": BOTH,  # direct: plain onnxruntime fed batches in process
}
LOCAL = ("local", "local-bulk")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
RSS_RANGE = re.compile(r"^\d+ → \d+$")


def table_rows(
    stdout: str, targets: tuple[str, ...] = BOTH
) -> dict[tuple[str, str], dict[str, str]]:
    rows: dict[tuple[str, str], dict[str, str]] = {}
    header: list[str] = []
    for line in stdout.splitlines():
        if not line.startswith("| "):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[:2] == ["scenario", "target"]:
            header = cells
        elif header and len(cells) == len(header) and cells[1] in targets:
            rows[(cells[0], cells[1])] = dict(zip(header, cells, strict=True))
    return rows


def test_quick_benchmark_prints_a_row_per_scenario_and_target() -> None:
    assert redis_available(), "redis-server is not installed: `make test` installs it"
    result = subprocess.run(
        # Half a second per scenario and target is enough to fill every row with numbers.
        [sys.executable, "bench/run.py", "--quick", "--duration", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)

    expected = {(s, t) for s, targets in SCENARIOS.items() for t in targets}
    local_skipped = "local: skipped" in result.stdout  # the model's package is missing here
    if local_skipped:
        expected -= {(s, t) for s in LOCAL for t in BOTH}
    assert set(rows) == expected, result.stdout
    for (scenario, target), row in rows.items():
        for column in ("req/s", "p50 ms", "p99 ms", "CPU s", "CPU ms/req"):
            assert NUMBER.match(row[column]), (scenario, target, column, row[column])
        ok, _, completed = row["errors"].partition("/")
        assert ok.isdigit() and int(completed) > 0, (scenario, target, row["errors"])
        if scenario in LOCAL:
            assert row["upstream calls/req"] == "—", row  # no upstream at all
        else:
            assert NUMBER.match(row["upstream calls/req"]), (scenario, target, row)
        if scenario not in LOCAL or target != "direct":  # in-process, not a server's memory
            assert RSS_RANGE.match(row["RSS MB start → end"]), (scenario, target, row)
            assert NUMBER.match(row["peak RSS MB"]), (scenario, target, row)
        if target == "gateway" and scenario not in ("paced", *LOCAL):
            assert NUMBER.match(row["added p50 ms"]), (scenario, row["added p50 ms"])
    # Straight to the fake, one call is one request.
    assert float(rows[("batching", "direct")]["upstream calls/req"]) == 1.0

    assert "gateway/direct req/s" in result.stdout
    assert "Micro-benchmark" in result.stdout
    report = result.stdout[result.stdout.index("Throughput targets") :]
    # Whatever merging does to the call count, every client must get its own vector.
    batching = re.search(
        r"- batching: [\d.]+ upstream calls .*vectors (\d+) of (\d+) exact", report
    )
    assert batching is not None and batching[1] == batching[2] != "0", report
    assert "WRONG" not in report, report
    assert re.search(r"- paced: [\d.]+ client req/s .* [\d.]+ x .* (\d+) client errors", report)
    if not local_skipped:
        assert re.search(r"- local: [\d.]+ req/s through the gateway .* = [\d.]+ ", report)
        assert re.search(r"- local-bulk: [\d.]+ sentences/s .* = [\d.]+ ", report)
    assert re.search(r"- shipped-defaults, CPU ms per request: .*gateway [\d.]+", report), report
    # The batch scenario (bench/batch.py): both of its figures, side by side.
    assert re.search(r"gateway, create -> completed +[\d.]+ s", result.stdout), result.stdout
    assert re.search(r"upstream alone, calls of 2048.* [\d.]+ s", result.stdout)
    assert re.search(r"beside batch p50 +[\d.]+ ms +p99 +[\d.]+ ms +errors 0", result.stdout)


def test_the_stack_floor_peer_runs_beside_the_gateway() -> None:
    """The one peer that needs nothing installed: it starts, serves every request of the
    load, and is reported beside the gateway."""
    result = subprocess.run(
        [
            sys.executable, "bench/run.py", "--quick", "--duration", "0.5", "--no-micro",
            "--only", "shipped-defaults", "--peers", "stack-floor",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout, ("gateway", "stack-floor"))
    assert set(rows) == {("shipped-defaults", "gateway"), ("shipped-defaults", "stack-floor")}
    floor = rows[("shipped-defaults", "stack-floor")]
    ok, _, completed = floor["errors"].partition("/")
    assert ok == "0" and int(completed) > 0, floor
    assert NUMBER.match(floor["CPU ms/req"]), floor
    assert "stack floor" in result.stdout  # its ratio columns
