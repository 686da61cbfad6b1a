"""The `batch` scenario: the Batch API's two measured targets (docs/batches.md, "Performance").

1. Fast for bulk: a batch of 20,000 lines x 5 unique inputs (100,000 inputs, 64 dimensions)
   against a fast fake upstream, from `batches.create` to `completed`, beside the time the
   upstream itself takes to embed the same 100,000 inputs sent to it directly in calls of 2,048
   (as many at once as the gateway's route lets a batch hold). Target: at most twice it.
2. Interactive first: an upstream that admits 100 calls a second, paced by the gateway
   (`max_requests_per_second: 100`) and taking 32 inputs a call, so a batch keeps every pacing
   slot wanted. Single-input requests at a steady rate, first alone, then while such a batch
   runs. Target: their p99 with the batch within 1.5x their p99 alone plus one pacing interval,
   with no error, while the batch advances.

The gateway here is its own process, as `embeddings-gateway` runs with no Redis: batches in
SQLite, files in a directory of the run's work dir. Its CPU seconds during the batch are
reported beside the wall time. With `--profile DIR --profile-scenario batch`, one more batch of
the same size runs under py-spy (after the measured one, which py-spy would slow down): its
collapsed stacks, their summary (bench/pyspy.py) and a flame graph go to DIR.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.procs import Managed, cpu_seconds, free_port
from bench.servers import http_ok, start_fake
from bench.session import ROOT, UPSTREAM_KEY, Bench, log

LINES = 20_000
INPUTS_PER_LINE = 5
DIMS = 64
CALL_INPUTS = 2048
PACED_RATE = 100.0
PACED_CALL_INPUTS = 32
HEADROOM = 0.95  # app/core/routing/pacing.py: calls are spaced 1 / (rate x 0.95) apart
BATCH_SLOTS = 3  # the fast route's max_inflight_calls is 4: bulk may hold all but one
INTERACTIVE_RATE = 20.0  # requests a second, open loop


@dataclass
class Gateway:
    url: str
    key: str
    process: Managed


def run_batch(bench: Bench) -> list[str]:
    """Both measurements; the report's lines."""
    quick = bench.args.quick
    lines = 2_000 if quick else LINES
    phase = 3.0 if quick else 20.0
    fast = start_fake_dims(bench, "fake-batch-fast", None)
    paced = start_fake_dims(bench, "fake-batch-paced", PACED_RATE)
    gateway = _start_gateway(bench, fast, paced)
    try:
        return asyncio.run(_measure(bench, gateway, fast, lines, phase))
    finally:
        gateway.process.stop()


def start_fake_dims(bench: Bench, name: str, max_rps: float | None) -> str:
    saved = bench.args.dims
    bench.args.dims = DIMS  # the fake's width comes from the run's --dims
    try:
        return start_fake(bench, name, 0.0, max_rps)[1]
    finally:
        bench.args.dims = saved


async def _measure(
    bench: Bench, gateway: Gateway, fast_url: str, lines: int, phase: float
) -> list[str]:
    inputs = lines * INPUTS_PER_LINE
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        await _direct(http, fast_url, "warm", CALL_INPUTS)
        upstream_s = await _direct(http, fast_url, secrets.token_hex(4), inputs)
        log(f"  batch: the upstream alone embeds {inputs} inputs in {upstream_s:.2f} s")
        content = _batch_file("batch-fast", lines, secrets.token_hex(4))
        run = await _run_batch(http, gateway, content)
        log(
            f"  batch: {lines} lines through the gateway in {run['seconds']:.2f} s "
            f"(validation {run['validating']:.2f} s, upload {run['upload']:.2f} s, "
            f"gateway CPU {run['cpu']:.2f} s)"
        )
        if bench.args.profile and bench.args.profile_scenario == "batch":
            await _profile(bench, http, gateway, lines)
        alone = await _interactive(http, gateway, phase, secrets.token_hex(4))
        log(f"  batch: interactive alone p99 {alone['p99']:.1f} ms, errors {alone['errors']}")
        # As many inputs again: more than the upstream's 100 calls/s can take in a phase.
        content = _batch_file("batch-paced", lines, secrets.token_hex(4))
        busy = await _with_batch(http, gateway, content, phase)
        log(
            f"  batch: interactive beside a batch p99 {busy['p99']:.1f} ms, errors "
            f"{busy['errors']}; the batch did {busy['batch_lines']} lines meanwhile"
        )
    ratio = run["seconds"] / upstream_s
    interval_ms = 1000 / (PACED_RATE * HEADROOM)
    bound = 1.5 * alone["p99"] + interval_ms
    return [
        f"batch: {lines} lines x {INPUTS_PER_LINE} inputs ({inputs} unique, {DIMS} dims):",
        f"  gateway, create -> completed        {run['seconds']:8.2f} s "
        f"({inputs / run['seconds']:,.0f} inputs/s; upload {run['upload']:.2f} s before it)",
        f"    of which validating {run['validating']:.2f} s; gateway CPU {run['cpu']:.2f} s "
        f"({1e6 * run['cpu'] / inputs:.1f} us an input)",
        f"  upstream alone, calls of {CALL_INPUTS}, {BATCH_SLOTS} at once {upstream_s:8.2f} s",
        f"  ratio {ratio:.2f} (target <= 2.00): {'met' if ratio <= 2 else 'MISSED'}",
        f"interactive first (upstream at {PACED_RATE:g} calls/s, {PACED_CALL_INPUTS} inputs a "
        f"call; {INTERACTIVE_RATE:g} single-input requests/s for {phase:g} s):",
        f"  alone        p50 {alone['p50']:6.1f} ms  p99 {alone['p99']:6.1f} ms  "
        f"errors {alone['errors']}  ({alone['count']} requests)",
        f"  beside batch p50 {busy['p50']:6.1f} ms  p99 {busy['p99']:6.1f} ms  "
        f"errors {busy['errors']}  ({busy['count']} requests); batch lines done meanwhile: "
        f"{busy['batch_lines']}",
        f"  bound 1.5 x {alone['p99']:.1f} + {interval_ms:.1f} = {bound:.1f} ms: "
        + (
            "met"
            if busy["p99"] <= bound and busy["errors"] == 0 and busy["batch_lines"] > 0
            else "MISSED"
        ),
    ]


async def _direct(http: aiohttp.ClientSession, url: str, run: str, inputs: int) -> float:
    """Seconds for the fake to embed `inputs` unique inputs in calls of 2,048, BATCH_SLOTS at
    once, as the gateway asks it (base64)."""
    calls = [
        [
            f"{run}-{i}|batch text {i % INPUTS_PER_LINE}"
            for i in range(s, min(s + CALL_INPUTS, inputs))
        ]
        for s in range(0, inputs, CALL_INPUTS)
    ]
    gate = asyncio.Semaphore(BATCH_SLOTS)
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}

    async def call(items: list[str]) -> None:
        async with gate:
            body = {"model": "bench-batch", "input": items, "encoding_format": "base64"}
            async with http.post(url + "/v1/embeddings", json=body, headers=headers) as answer:
                payload = await answer.read()
                if answer.status != 200 or len(orjson.loads(payload)["data"]) != len(items):
                    raise RuntimeError(f"the fake upstream answered {answer.status}")

    began = time.perf_counter()
    await asyncio.gather(*(call(items) for items in calls))
    return time.perf_counter() - began


def _batch_file(model: str, lines: int, run: str) -> bytes:
    rows = []
    for n in range(lines):
        inputs = [f"{run}-{n}-{j}|batch text {j}" for j in range(INPUTS_PER_LINE)]
        body = {"model": model, "input": inputs, "encoding_format": "base64"}
        rows.append(
            orjson.dumps(
                {"custom_id": f"l{n}", "method": "POST", "url": "/v1/embeddings", "body": body}
            )
        )
    return b"\n".join(rows) + b"\n"


async def _upload(http: aiohttp.ClientSession, gateway: Gateway, content: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="bench.jsonl")
    async with http.post(f"{gateway.url}/v1/files", data=form, headers=_auth(gateway)) as answer:
        if answer.status != 200:
            raise RuntimeError(f"upload answered {answer.status}: {await answer.text()}")
        return str((await answer.json())["id"])


async def _create(http: aiohttp.ClientSession, gateway: Gateway, file_id: str) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    async with http.post(f"{gateway.url}/v1/batches", json=body, headers=_auth(gateway)) as answer:
        if answer.status != 200:
            raise RuntimeError(f"batch create answered {answer.status}: {await answer.text()}")
        return dict(await answer.json())


async def _retrieve(http: aiohttp.ClientSession, gateway: Gateway, batch_id: str) -> dict[str, Any]:
    async with http.get(f"{gateway.url}/v1/batches/{batch_id}", headers=_auth(gateway)) as answer:
        return dict(await answer.json())


async def _run_batch(
    http: aiohttp.ClientSession, gateway: Gateway, content: bytes
) -> dict[str, float]:
    began = time.perf_counter()
    file_id = await _upload(http, gateway, content)
    uploaded = time.perf_counter()
    cpu = cpu_seconds(gateway.process.pid)
    batch = await _create(http, gateway, file_id)
    created = time.perf_counter()
    validating = None
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.05)
        batch = await _retrieve(http, gateway, batch["id"])
        if validating is None and batch["status"] != "validating":
            validating = time.perf_counter() - created
    done = time.perf_counter()
    cpu = cpu_seconds(gateway.process.pid) - cpu
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != counts["total"]:
        raise RuntimeError(f"the benchmark batch ended {batch['status']}: {counts}")
    return {
        "upload": uploaded - began,
        "seconds": done - created,
        "validating": validating or 0.0,
        "cpu": cpu,
    }


async def _profile(bench: Bench, http: aiohttp.ClientSession, gateway: Gateway, lines: int) -> None:
    """One more batch per py-spy format (collapsed stacks, then a flame graph), py-spy attached
    from `batches.create` to `completed`; the stacks' summary is printed and kept."""
    from bench.modes import py_spy_path
    from bench.pyspy import summarize

    out = Path(bench.args.profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stacks = out / "gateway-batch.txt"
    for fmt, path in (("raw", stacks), ("flamegraph", out / "gateway-batch.svg")):
        content = _batch_file("batch-fast", lines, secrets.token_hex(4))
        file_id = await _upload(http, gateway, content)
        spy = Managed(
            f"py-spy {fmt}",
            [
                str(py_spy_path(bench)), "record",
                "--pid", str(gateway.process.pid),
                "--rate", "200",
                "--format", fmt,
                "--nolineno",
                "--output", str(path),
            ],
            log_path=bench.workdir / f"py-spy-batch-{fmt}.log",
        ).start()  # fmt: skip
        try:
            await asyncio.sleep(1.0)  # attached
            batch = await _create(http, gateway, file_id)
            while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                await asyncio.sleep(0.05)
                batch = await _retrieve(http, gateway, batch["id"])
            assert spy.proc is not None
            spy.proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            await asyncio.to_thread(spy.proc.wait, 30)
        finally:
            spy.stop()
        if spy.proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"py-spy failed (root, or ptrace allowed?):\n{spy.log_tail()}")
    summary = summarize(stacks.read_text())
    (out / "gateway-batch-summary.txt").write_text(summary + "\n")
    print(f"\nProfile of the gateway running a {lines}-line batch (py-spy, 200 Hz)")
    print(f"flame graph: {out / 'gateway-batch.svg'}\n{summary}")


async def _interactive(
    http: aiohttp.ClientSession, gateway: Gateway, seconds: float, run: str
) -> dict[str, float]:
    """Single-input requests at INTERACTIVE_RATE a second (open loop) for `seconds`."""
    latencies: list[float] = []
    errors = 0

    async def one(n: int) -> None:
        nonlocal errors
        body = {"model": "batch-paced", "input": f"{run}-{n}|interactive text"}
        began = time.perf_counter()
        try:
            async with http.post(
                f"{gateway.url}/v1/embeddings", json=body, headers=_auth(gateway)
            ) as answer:
                await answer.read()
                if answer.status != 200:
                    errors += 1
                    return
        except aiohttp.ClientError:
            errors += 1
            return
        latencies.append((time.perf_counter() - began) * 1000)

    tasks = []
    start = time.perf_counter()
    n = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        tasks.append(asyncio.create_task(one(n)))
        n += 1
        await asyncio.sleep(max(0.0, n / INTERACTIVE_RATE - elapsed))
    await asyncio.gather(*tasks)
    ordered = sorted(latencies) or [0.0]
    return {
        "count": len(tasks),
        "errors": errors,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def _with_batch(
    http: aiohttp.ClientSession, gateway: Gateway, content: bytes, seconds: float
) -> dict[str, float]:
    file_id = await _upload(http, gateway, content)
    batch = await _create(http, gateway, file_id)
    while batch["status"] == "validating":
        await asyncio.sleep(0.05)
        batch = await _retrieve(http, gateway, batch["id"])
    if batch["status"] != "in_progress":
        raise RuntimeError(f"the paced benchmark batch is {batch['status']}: {batch['errors']}")
    await asyncio.sleep(1.0)  # the batch at full speed: every pacing slot wanted
    before = (await _retrieve(http, gateway, batch["id"]))["request_counts"]["completed"]
    result = await _interactive(http, gateway, seconds, secrets.token_hex(4))
    after = await _retrieve(http, gateway, batch["id"])
    async with http.post(
        f"{gateway.url}/v1/batches/{batch['id']}/cancel", headers=_auth(gateway)
    ) as answer:
        await answer.read()
    return {**result, "batch_lines": after["request_counts"]["completed"] - before}


def _auth(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key}"}


def _start_gateway(bench: Bench, fast: str, paced: str) -> Gateway:
    def provider(url: str, **extra: Any) -> dict[str, Any]:
        return {"type": "nanogpt", "base_url": url + "/v1", "api_key": UPSTREAM_KEY,
                "max_concurrency": 64, "returns_base64": True, **extra}  # fmt: skip

    def model(provider_name: str, **route: Any) -> dict[str, Any]:
        return {
            "name": "Batch benchmark model",
            "description": "Served by a fake upstream on 127.0.0.1",
            "owned_by": "bench",
            "dimensions": DIMS,
            "max_tokens": 8191,
            "pricing": {"per_million_tokens": 0.02},
            "cache": False,  # every input is unique
            "routes": [{"provider": provider_name, "model": "bench-batch", **route}],
        }

    registry = {
        "providers": {
            "fast": provider(fast),
            "paced": provider(paced, max_requests_per_second=PACED_RATE),
        },
        "models": {
            "batch-fast": model("fast", max_inflight_calls=BATCH_SLOTS + 1),
            "batch-paced": model("paced", max_batch_size=PACED_CALL_INPUTS),
        },
    }
    path = bench.workdir / "batch-models.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "REDIS_"))},
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        "MODELS_CONFIG": str(path),
        "GATEWAY_API_KEYS": key,
        "RATE_LIMIT_PER_SECOND": "0",
        "LOG_LEVEL": "warning",
        "BATCH_DIR": str(bench.workdir / "batch-files"),
        "BATCH_DB": str(bench.workdir / "batches.db"),
        "SHUTDOWN_DELAY_SECONDS": "0",
        "PYTHONPATH": str(ROOT),
    }
    process = Managed(
        "gateway (batch)",
        [sys.executable, "-m", "app.cli"],
        log_path=bench.workdir / "gateway-batch.log",
        env=env,
        cwd=bench.workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(lambda: http_ok(url + "/readyz"), timeout=60)
    return Gateway(url, key, process)
