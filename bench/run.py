#!/usr/bin/env python
"""Benchmark the gateway against its own upstream and, side by side, other proxies (peers).

One command starts everything on 127.0.0.1 -- a redis-server (no persistence), fast fake
upstreams (bench/fake_server.py), the gateway as `embeddings-gateway` would run it (one worker,
Redis rate limiting on with a limit too high to trigger) and, if asked, peers (bench/peers:
nginx as a plain reverse proxy, Portkey's gateway, LiteLLM's proxy), each installed on first
use -- then drives each target with the same closed-loop load from a separate process
(bench/loadgen.py) and prints one table: req/s, latency, latency added over the upstream, CPU
seconds and peak RSS of the target's process tree, upstream calls per request, the ratios
between targets, and the throughput targets (micro-batching, pacing, the local model).

    python bench/run.py                   # every scenario, 10 s each, concurrency 16
    python bench/run.py --peers           # ... and nginx and Portkey (installed on first use)
    python bench/run.py --peers all       # ... and LiteLLM too (or --peers nginx,litellm ...)
    python bench/run.py --litellm         # LiteLLM alone (installed on first use)
    python bench/run.py --quick           # CI: ~1.5 s per scenario, tiny load
    python bench/run.py --soak 60         # small requests for 60 s: RSS at start and end
    python bench/run.py --profile DIR     # ... then py-spy the gateway (--profile-scenario)
    python bench/run.py --tracing 0.1,1   # ... and the gateway traced at 10 % and at 100 %

Every child runs in its own process group and is stopped on exit, error or Ctrl-C.

This file is the orchestration (options, start-up order, exit status); the parts live beside
it: session.py (the shapes they share), servers.py (redis, fakes, gateway), peers/ (LiteLLM,
and any other gateway measured side by side), measure.py, reports.py and modes.py (the table,
the soak, the profile, the micro-benchmark).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

# `python bench/run.py` puts bench/ (not the repository) first on sys.path.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.batch import run_batch  # noqa: E402
from bench.local import build_model_dir  # noqa: E402
from bench.modes import (  # noqa: E402
    run_micro,
    run_profile,
    run_soak,
    run_table,
    run_tracing_rounds,
)
from bench.peers import DEFAULT_PEERS, PEERS  # noqa: E402
from bench.servers import local_model_problem, start_fakes, start_gateway, start_redis  # noqa: E402
from bench.session import SCENARIO_NAMES, Bench, log  # noqa: E402
from bench.tracing import ratios, start_traced  # noqa: E402

# Scenarios whose errors are the figure itself: today's gateway, unpaced, gets the paced
# upstream's 429s; a run is not broken for that.
ERRORS_MEASURED = {"paced"}


def peer_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(PEERS)
    unknown = set(names) - set(PEERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peers {sorted(unknown)}; known: {list(PEERS)}")
    return names


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
    parser.add_argument(
        "--peers",
        type=peer_names,
        nargs="?",
        const=list(DEFAULT_PEERS),
        metavar="NAMES",
        help=f"also benchmark these peers, of {', '.join(PEERS)} or `all` "
        f"(no value: {','.join(DEFAULT_PEERS)})",
    )
    parser.add_argument(
        "--tracing",
        type=ratios,
        default=[],
        metavar="RATIOS",
        help="also the gateway traced at these sampling ratios, e.g. 0.1,1 (bench/tracing.py)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --tracing: only compare the gateways, each scenario N times in turn",
    )
    parser.add_argument("--litellm", action="store_true", help="also benchmark LiteLLM's proxy")
    parser.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs")
    parser.add_argument("--install-timeout", type=float, default=1200)
    parser.add_argument(
        "--batch-concurrency", type=int, default=64, help="batching and paced scenarios (64)"
    )
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
    parser.add_argument(
        "--profile-scenario",
        default="small-float",
        choices=SCENARIO_NAMES,
        help="which scenario's load to profile (small-float); batch: one more batch, py-spy "
        "attached from create to completed (bench/batch.py)",
    )
    parser.add_argument(
        "--profile-target",
        default="gateway",
        help="which gateway to profile: gateway, or a traced one (gateway+trace0.1, ...)",
    )
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
    if args.duration <= 0 or min(args.concurrency, args.large_concurrency) < 1:
        parser.error("--duration, --concurrency and --large-concurrency must be positive")
    if args.batch_concurrency < 1:
        parser.error("--batch-concurrency must be positive")
    if args.rounds < 1 or (args.rounds > 1 and not args.tracing):
        parser.error("--rounds N (N > 1) compares traced gateways: it needs --tracing")
    # --litellm predates --peers and still means it.
    args.peers = list(dict.fromkeys([*(args.peers or ()), *(["litellm"] if args.litellm else [])]))
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
        if not args.no_micro and args.soak is None and args.rounds == 1:
            run_micro(bench)  # before any server starts, on an idle machine
        log(f"starting redis-server, fake upstreams and the gateway (logs in {workdir})")
        redis_url = start_redis(bench)
        start_fakes(bench)
        bench.local_model_problem = local_model_problem()
        if bench.local_model_problem is None:
            bench.local_model_dir = build_model_dir(workdir)
        bench.gateway = start_gateway(bench, redis_url)
        if args.tracing:
            log(f"starting the gateway traced at {args.tracing} and an OTLP sink for each")
            start_traced(bench, redis_url)
        if args.soak is not None:
            run_soak(bench)
        elif args.rounds > 1:
            run_tracing_rounds(bench, redis_url)
        else:
            for name in args.peers:
                log(f"starting {name}")
                bench.peers.append(PEERS[name](bench))
            if not args.only or set(args.only) - {"batch"}:
                run_table(bench)
            if args.profile and args.profile_scenario != "batch":
                run_profile(bench)
            if not args.only or "batch" in args.only:
                log("batch: the Batch API's two targets (bench/batch.py)")
                print("\n" + "\n".join(run_batch(bench)))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in bench.results], indent=2))
        failed = False
        # A target that never answered 200 is broken, not slow: say so in the exit status.
        broken = [
            f"{r.scenario}/{r.target}"
            for r in bench.results
            if r.completed == r.errors and r.scenario not in ERRORS_MEASURED
        ]
        if broken:
            log(f"no successful request for: {', '.join(broken)}")
            return 1
        wrong = [f"{r.scenario}/{r.target}" for r in bench.results if r.vectors_wrong]
        if wrong:
            log(f"wrong vectors from: {', '.join(wrong)}")
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
