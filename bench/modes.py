"""What a run measures: the scenario table (default), the soak, the profile, the micro-benchmark."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench import procs
from bench.local import LOCAL_BATCH, LOCAL_CONCURRENCY, LOCAL_DIMS, measure_in_process
from bench.measure import check_answer, loadgen, measure
from bench.procs import Managed, run_bounded
from bench.reports import machine, ratio_table, results_table, targets_report
from bench.servers import PACED_LIMIT
from bench.session import ROOT, Bench, Scenario, log
from bench.tracing import restart_gateways, rounds_report, tracing_report


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    c, wide = args.concurrency, args.batch_concurrency
    large = Scenario(
        "large-base64", "bench-large", args.large_inputs, "base64", min(c, args.large_concurrency)
    )
    # Large and local last: memory a process has touched stays resident, so the small
    # scenarios would otherwise report the large one's peak (or the ONNX model) as theirs.
    plan = [
        # One request at a time: the latency the gateway adds, with no queueing in it.
        Scenario("latency", "bench-small", 0, "float", 1),
        Scenario("small-float", "bench-small", 0, "float", c),
        Scenario("small-base64", "bench-small", 0, "base64", c),
        # As shipped: Redis rate limiting and the cache on (every input unique, so all misses).
        Scenario("shipped-defaults", "bench-defaults", 0, "float", c),
        Scenario("failover", "bench-failover", 0, "float", c, upstream="faulty"),
        # Many single-input requests at once to one model: what micro-batching merges. The
        # peers do not merge, so they are not measured here.
        Scenario(
            "batching",
            "bench-batch",
            0,
            "base64",  # exact bytes to compare, and cheap for the load generator to check
            wide,
            targets=("direct", "gateway"),
            check_vectors=True,
        ),
        # An upstream that admits 100 calls a second (429 past it), and the gateway told so.
        Scenario(
            "paced",
            "bench-paced",
            0,
            "float",
            wide,
            upstream="paced",
            targets=("gateway",),
            settle_seconds=1.1,  # the warm-up's calls leave the fake's one-second window
        ),
        *([large] if args.large_inputs > 0 else []),
        # One sentence a request at concurrency 16 through the gateway, against the same
        # session fed batches of 32 (direct) and Infinity on the same directory (a peer).
        Scenario(
            "local",
            "bench-local",
            0,
            "float",
            LOCAL_CONCURRENCY,
            upstream=None,
            targets=("gateway", "infinity"),
            dims=LOCAL_DIMS,
        ),
        # One request of --large-inputs sentences at a time, as the SDK sends it (base64),
        # against plain onnxruntime at batch 32 (direct).
        *(
            [
                Scenario(
                    "local-bulk",
                    "bench-local",
                    args.large_inputs,
                    "base64",
                    1,
                    upstream=None,
                    targets=("gateway",),
                    dims=LOCAL_DIMS,
                    warmup=1,
                    requests=1 if args.quick else 3,
                )
            ]
            if args.large_inputs > 0
            else []
        ),
    ]
    return [s for s in plan if not args.only or s.name in args.only]


def run_table(bench: Bench) -> None:
    args = bench.args
    log(f"loading each target for {args.duration:g} s per scenario")
    for scenario in scenarios(args):
        local = scenario.name.startswith("local")
        if local and bench.local_model_problem is not None:
            log(f"{scenario.name}: skipped, the local model cannot run here")
            continue
        if local:
            bare = scenario.name == "local-bulk"
            bench.results.append(measure_in_process(bench, scenario.name, bare))
        for target in bench.targets(scenario):
            # Checked just before its own load, so no earlier scenario's memory shows up here.
            check_answer(target, scenario, args.dims)
            bench.results.append(measure(bench, target, scenario))

    print(f"\nEmbeddings gateway benchmark — {machine()}")
    limit = f", at most {args.requests} requests" if args.requests else ""
    print(
        f"closed loop, concurrency {args.concurrency} (latency: 1; large-base64: "
        f"{min(args.concurrency, args.large_concurrency)}, {args.large_inputs} inputs; "
        f"batching and paced: {args.batch_concurrency}; local: {LOCAL_CONCURRENCY}; "
        f"local-bulk: 1, {args.large_inputs} inputs), "
        f"{args.duration:g} s per scenario and target{limit}, {args.dims} dims; gateway: "
        f"1 worker, Redis rate limiting on, cache {'on' if args.cache else 'off'} (on for "
        f"shipped-defaults), upstream asked for {'floats' if args.upstream_floats else 'base64'}"
        "\n"
    )
    print(results_table(bench.results))
    print()
    print(ratio_table(bench.results))
    print(
        "\nCPU s and peak RSS are the target's own process tree (for `direct`, the fake upstream"
        "); `errors` counts non-200 answers (the failover upstream fails 10 % on purpose); "
        "`upstream calls/req` counts the embedding calls every fake upstream received during "
        "the load, per client request. local/direct is the same ONNX session fed batches of "
        f"{LOCAL_BATCH} in process (bench/local_model.py) with the same threads as the "
        f"gateway's (the local provider's defaults: {local_threads()}); local-bulk/direct is "
        f"plain onnxruntime at batch {LOCAL_BATCH} on the same threads: req/s there are "
        "sentences/s, p50/p99 a batch's. local-bulk/gateway's req/s are requests of "
        f"{args.large_inputs} sentences."
    )
    if bench.local_model_problem is not None and (not args.only or "local" in args.only):
        print(f"local: skipped, the local model cannot run here: {bench.local_model_problem}")
    print()
    print(targets_report(bench.results, PACED_LIMIT or 0, LOCAL_BATCH, args.large_inputs))
    if bench.traced:
        print()
        print(tracing_report(bench))


def local_threads() -> str:
    from app.providers.local import LocalConfig

    fields = LocalConfig.model_fields
    threads, workers = fields["threads"].default, fields["workers"].default
    return f"{threads} intra-op thread{'s' * (threads != 1)} x {workers} runs at once"


def run_tracing_rounds(bench: Bench, redis_url: str) -> None:
    """`--tracing` with `--rounds N`: N rounds, each with fresh gateway processes (untraced,
    then each ratio), each scenario measured on every gateway in turn (the first one rotating),
    so that neither a process's own luck nor a busy machine's drift favours one; the report
    compares medians. Local, large and paced are left out unless `--only` names them."""
    args = bench.args
    plan = [
        s for s in scenarios(args) if args.only or s.name not in ("local", "large-base64", "paced")
    ]
    for turn in range(args.rounds):
        if turn:
            restart_gateways(bench, redis_url)
        assert bench.gateway is not None
        gateways = [bench.gateway, *bench.traced]
        log(f"round {turn + 1} of {args.rounds}: {len(gateways)} gateways, fresh processes")
        first = turn % len(gateways)
        for scenario in plan:
            for target in gateways:
                check_answer(target, scenario, args.dims)
            for target in gateways[first:] + gateways[:first]:
                bench.results.append(measure(bench, target, scenario))
    print(f"\nTracing cost — {machine()}")
    print(
        f"closed loop, concurrency {args.concurrency} (latency: 1; batching: "
        f"{args.batch_concurrency}), {args.rounds} rounds of {args.duration:g} s per scenario "
        "and gateway, each round with fresh processes; gateway: 1 worker, as in the scenario "
        "table\n"
    )
    print(rounds_report(bench))


def run_soak(bench: Bench) -> None:
    assert bench.gateway is not None
    args = bench.args
    scenario = Scenario("small-float", "bench-small", 0, "float", args.concurrency)
    check_answer(bench.gateway, scenario, args.dims)
    pid = bench.gateway.process.pid
    loadgen(bench, bench.gateway, scenario, "soak-warmup", requests=500, duration=30)
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    def sample() -> None:
        if not samples or time.monotonic() - start - samples[-1][0] >= 1.0:
            samples.append((time.monotonic() - start, procs.rss_mb(pid)))

    sample()
    cpu_before = procs.cpu_seconds(pid)
    load = loadgen(
        bench,
        bench.gateway,
        scenario,
        "soak",
        requests=args.requests or 100_000_000,
        duration=args.soak,
        tick=sample,
    )
    cpu = procs.cpu_seconds(pid) - cpu_before
    samples.append((time.monotonic() - start, procs.rss_mb(pid)))
    first, last = samples[0][1], samples[-1][1]
    print(f"\nSoak: small-float against the gateway for {args.soak:g} s — {machine()}")
    print(
        f"{load['completed']} requests ({load['rps']:.1f} req/s, errors {load['errors']}), "
        f"p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms, "
        f"gateway CPU {cpu:.1f} s"
    )
    step = max(1, len(samples) // 6)
    shown = samples[::step] + ([] if (len(samples) - 1) % step == 0 else samples[-1:])
    series = ", ".join(f"{t:.0f}s {mb:.1f}" for t, mb in shown)
    print(f"gateway RSS MB: {series}")
    print(
        f"RSS start {first:.1f} MB, end {last:.1f} MB, change {last - first:+.1f} MB "
        f"({100 * (last - first) / first:+.1f} %), max {max(mb for _, mb in samples):.1f} MB"
    )


def py_spy_path(bench: Bench) -> Path:
    """py-spy in this venv, installed on first use."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        log("installing py-spy into this venv")
        pip = Managed(
            "pip install py-spy",
            [sys.executable, "-m", "pip", "install", "-q", "py-spy"],
            log_path=bench.workdir / "pip-py-spy.log",
        )
        if run_bounded(pip, timeout=bench.args.install_timeout) != 0:
            raise RuntimeError(f"could not install py-spy:\n{pip.log_tail()}")
    return py_spy


def run_profile(bench: Bench) -> None:
    """py-spy the gateway under one scenario's load: a flame graph and a text summary."""
    from bench.pyspy import summarize

    assert bench.gateway is not None
    args = bench.args
    gateways = {t.name: t for t in (bench.gateway, *bench.traced)}
    if args.profile_target not in gateways:
        raise RuntimeError(f"--profile-target: one of {sorted(gateways)}")
    target = gateways[args.profile_target]
    py_spy = py_spy_path(bench)
    out = Path(args.profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scenario = next(s for s in scenarios(args) if s.name == args.profile_scenario)
    seconds = args.profile_seconds
    pid = target.process.pid
    warmup = 4 if scenario.inputs > 100 else 500
    loadgen(bench, target, scenario, "profile-warmup", requests=warmup, duration=60)
    # One load long enough for both recordings; py-spy attaches once it is running.
    load = Managed(
        "loadgen profile",
        [
            sys.executable, "-m", "bench.loadgen",
            "--url", target.url,
            "--model", scenario.model,
            "--inputs", str(scenario.inputs),
            "--encoding-format", scenario.encoding_format,
            "--concurrency", str(scenario.concurrency),
            "--timeout", str(args.request_timeout),
            "--requests", "100000000",
            "--duration", str(2 * seconds + 4),
            "--out", str(bench.workdir / "profile-load.json"),
            *[x for h in target.headers for x in ("--header", h)],
        ],
        log_path=bench.workdir / "profile-load.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()  # fmt: skip
    try:
        time.sleep(1)
        name = f"{target.name}-{scenario.name}"
        recordings = (("raw", f"{name}.txt"), ("flamegraph", f"{name}.svg"))
        for fmt, filename in recordings:
            spy = Managed(
                f"py-spy {fmt}",
                [
                    str(py_spy), "record",
                    "--pid", str(pid),
                    "--duration", str(max(1, round(seconds))),
                    "--rate", "200",
                    "--format", fmt,
                    "--nolineno",
                    "--output", str(out / filename),
                ],
                log_path=bench.workdir / f"py-spy-{fmt}.log",
            )  # fmt: skip
            if run_bounded(spy, timeout=seconds + 60) != 0:
                raise RuntimeError(f"py-spy failed (root, or ptrace allowed?):\n{spy.log_tail()}")
        assert load.proc is not None
        load.proc.wait(timeout=seconds + args.request_timeout + 60)
    finally:
        load.stop()
    summary = summarize((out / f"{name}.txt").read_text())
    (out / f"{name}-summary.txt").write_text(summary + "\n")
    print(f"\nProfile of {target.name} under {scenario.name} load ({seconds:g} s, py-spy, 200 Hz)")
    print(f"flame graph: {out / (name + '.svg')}\n{summary}")


def run_micro(bench: Bench) -> None:
    args = bench.args
    rows, repeat = (128, 2) if args.quick else (2048, 5)
    child = Managed(
        "micro-benchmark",
        [
            sys.executable, "-m", "bench.encoding",
            "--rows", str(rows),
            "--dims", str(args.dims),
            "--repeat", str(repeat),
        ],
        log_path=bench.workdir / "micro.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if run_bounded(child, timeout=600) != 0:
        raise RuntimeError(f"micro-benchmark failed:\n{child.log_tail()}")
    print("\n" + child.log_path.read_text().strip())
