"""What one benchmark run shares between its parts: the run itself, scenarios, targets, results.

run.py (orchestration) fills a Bench; servers.py and peers/ start the targets; measure.py loads
them; reports.py prints the results; modes.py chooses what to measure.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Managed

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
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
    peers: list[Target] = field(default_factory=list)  # LiteLLM, ...: see bench/peers
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
        return [t for t in (direct, self.gateway, *self.peers) if t is not None]


def log(message: str) -> None:
    # Progress goes to stderr; stdout carries only the report (the smoke test parses it).
    print(message, file=sys.stderr, flush=True)
