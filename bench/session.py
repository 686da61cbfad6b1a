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
SCENARIO_NAMES = (
    "latency",
    "small-float",
    "small-base64",
    "shipped-defaults",
    "failover",
    "batching",
    "paced",
    "large-base64",
    "local",
    "local-bulk",
    "batch",  # the Batch API (bench/batch.py): its own gateway and upstreams, no table row
)


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    inputs: int  # 0: one string input; N: a list of N strings
    encoding_format: str
    concurrency: int
    # Which fake upstream `direct` is (servers.UPSTREAMS: main, faulty, paced); None: no
    # upstream at all (the local model), so no `direct` row and no upstream calls to count.
    upstream: str | None = "main"
    # The targets measured (None: every one started); e.g. only the gateway paces.
    targets: tuple[str, ...] | None = None
    dims: int | None = None  # vector width when it is not the run's --dims
    # Each request's text differs (not only its unique prefix) and every vector the target
    # returns is compared with the fake's own (tests/fakes/vectors.py): a merged upstream call
    # that hands a request someone else's vector shows up here.
    check_vectors: bool = False
    # Seconds to wait between warm-up and load: the paced upstream counts the last second.
    settle_seconds: float = 0.0
    # Warm-up requests (None: twice the concurrency, at least a few), and a fixed count of
    # measured requests instead of --duration's load (None): local-bulk's take seconds each.
    warmup: int | None = None
    requests: int | None = None

    @property
    def vectors(self) -> int:
        return max(self.inputs, 1)


@dataclass
class Target:
    name: str
    url: str  # the embeddings endpoint
    headers: list[str]
    process: Managed  # whose CPU and memory are measured
    # Models this target reaches some other way (a peer's failover route: another path or
    # other headers): model -> (url, headers).
    routes: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    # The scenarios it serves (None: every one); Infinity serves the local model only.
    only: tuple[str, ...] | None = None

    def endpoint(self, model: str) -> tuple[str, list[str]]:
        return self.routes.get(model, (self.url, self.headers))


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
    ok: int = 0  # answers with status 200
    upstream_calls: int | None = None  # embedding calls the fakes received during the load
    vectors_checked: int | None = None  # with Scenario.check_vectors
    vectors_wrong: int | None = None

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.completed if self.completed else 0.0

    @property
    def ok_rps(self) -> float:
        """Successful answers a second (`rps` counts every answer, errors too)."""
        return self.rps * self.ok / self.completed if self.completed else 0.0

    @property
    def calls_per_request(self) -> float | None:
        if self.upstream_calls is None or not self.completed:
            return None
        return self.upstream_calls / self.completed


@dataclass
class Bench:
    """Everything started for one run, and the settings every scenario shares."""

    args: argparse.Namespace
    workdir: Path
    # The fake upstreams by name (servers.UPSTREAMS): their process and base URL.
    upstreams: dict[str, tuple[Managed, str]] = field(default_factory=dict)
    gateway: Target | None = None
    # The gateway again, traced at each --tracing ratio (bench/tracing.py), and their sinks.
    traced: list[Target] = field(default_factory=list)
    sinks: dict[str, str] = field(default_factory=dict)
    peers: list[Target] = field(default_factory=list)  # nginx, Portkey, LiteLLM: bench/peers
    results: list[Result] = field(default_factory=list)
    # Why the local model cannot run here (servers.local_model_problem), or None if it can.
    local_model_problem: str | None = None
    # The sentence-transformers directory the local scenarios serve (bench/local.py).
    local_model_dir: Path | None = None

    @property
    def main_url(self) -> str:
        return self.upstreams["main"][1]

    @property
    def faulty_url(self) -> str:
        return self.upstreams["faulty"][1]

    def targets(self, scenario: Scenario) -> list[Target]:
        found: list[Target] = []
        if scenario.upstream is not None:
            upstream, upstream_url = self.upstreams[scenario.upstream]
            headers = [f"Authorization: Bearer {UPSTREAM_KEY}"]
            found.append(Target("direct", upstream_url + "/v1/embeddings", headers, upstream))
        found += [t for t in (self.gateway, *self.traced, *self.peers) if t is not None]
        # A traced gateway (`gateway+trace0.1`) goes wherever the gateway does.
        return [
            t
            for t in found
            if (scenario.targets is None or t.name.partition("+")[0] in scenario.targets)
            and (t.only is None or scenario.name in t.only)
        ]


def log(message: str) -> None:
    # Progress goes to stderr; stdout carries only the report (the smoke test parses it).
    print(message, file=sys.stderr, flush=True)
