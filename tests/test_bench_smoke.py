"""`python bench/run.py --quick` still runs end to end, so the benchmark cannot rot.

Timings depend on the machine and on whatever else runs beside it: nothing here asserts one.
It checks that the script exits 0 and prints a row with numbers for every scenario and target.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.redis_server import available as redis_available

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("latency", "small-float", "small-base64", "large-base64", "failover")
TARGETS = ("direct", "gateway")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
RSS_RANGE = re.compile(r"^\d+ → \d+$")


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

    rows: dict[tuple[str, str], dict[str, str]] = {}
    header: list[str] = []
    for line in result.stdout.splitlines():
        if not line.startswith("| "):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[:2] == ["scenario", "target"]:
            header = cells
        elif header and len(cells) == len(header) and cells[1] in TARGETS:
            rows[(cells[0], cells[1])] = dict(zip(header, cells, strict=True))

    assert set(rows) == {(s, t) for s in SCENARIOS for t in TARGETS}, result.stdout
    for (scenario, target), row in rows.items():
        for column in ("req/s", "p50 ms", "p99 ms", "CPU s", "CPU ms/req", "peak RSS MB"):
            assert NUMBER.match(row[column]), (scenario, target, column, row[column])
        assert RSS_RANGE.match(row["RSS MB start → end"]), (scenario, target, row)
        ok, _, completed = row["errors"].partition("/")
        assert ok.isdigit() and int(completed) > 0, (scenario, target, row["errors"])
        if target == "gateway":
            assert NUMBER.match(row["added p50 ms"]), (scenario, row["added p50 ms"])

    assert "gateway/direct req/s" in result.stdout
    assert "Micro-benchmark" in result.stdout
