"""The local model's own ceiling: its ONNX session fed batches directly, no HTTP, no gateway.

The `local` scenario compares the gateway serving one sentence per request with this: the
same provider code (app/providers/local.py, so the same session options, `threads` intra-op
threads and `workers` runs at once, from LocalConfig's defaults as the benchmark registry
uses them) handed batches of `--batch` sentences, `workers` batches in flight. Sentences are
shaped like the load generator's (`<run>-<n>|<text>`, the model embeds all of it). Runs in its
own process, as the gateway would, and prints one JSON object: sentences/s, batch latency
percentiles and the CPU seconds this process used while measuring.

    python -m bench.local_model --batch 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from app.providers import UpstreamCall
from app.providers.local import LOCAL_MODELS, LocalConfig, LocalProvider
from bench.loadgen import SHORT_TEXT, percentile

MODEL = "all-MiniLM-L6-v2"


def batch_call(texts: list[str]) -> UpstreamCall:
    return UpstreamCall(
        upstream_model=MODEL,
        inputs=texts,
        dimensions=None,
        user=None,
        expected_dims=LOCAL_MODELS[MODEL].dimensions,
        want_base64=False,
        timeout=120,
        request_id="bench-local",
    )


async def measure(batch: int, duration: float, max_batches: int) -> dict[str, Any]:
    config = LocalConfig(type="local")
    provider = LocalProvider("local", config)
    run = uuid.uuid4().hex[:8]
    issued = 0
    latencies: list[float] = []

    def next_batch() -> list[str]:
        nonlocal issued
        start, issued = issued, issued + batch
        return [f"{run}-{n}|{SHORT_TEXT}" for n in range(start, start + batch)]

    try:
        await provider.warm_up([MODEL])
        for _ in range(config.workers):  # every worker thread's first run, before timing
            await provider.embed(batch_call(next_batch()))
        issued = 0
        deadline = time.perf_counter() + duration
        cpu_before, start = time.process_time(), time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < deadline and len(latencies) < max_batches:
                t0 = time.perf_counter()
                await provider.embed(batch_call(next_batch()))
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(config.workers)))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_before  # every thread of this process
    finally:
        await provider.aclose()
    latencies.sort()
    sentences = len(latencies) * batch
    return {
        "sentences": sentences,
        "batches": len(latencies),
        "elapsed_s": elapsed,
        "sentences_per_s": sentences / elapsed,
        "batch_ms": {
            "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000,
        },
        "cpu_s": cpu,
        "threads": config.threads,
        "workers": config.workers,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--max-batches", type=int, default=1_000_000, help="a bound on the count")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.batch, args.duration, args.max_batches))
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
