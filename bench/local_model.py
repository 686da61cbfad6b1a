"""The local model's own ceiling: its ONNX session fed batches directly, no HTTP, no gateway.

The `local` scenario compares the gateway serving one sentence per request with this: the
same provider code (app/providers/local/, so the same session options, `threads` intra-op
threads and `workers` runs at once, from LocalConfig's defaults as the benchmark registry
uses them) handed batches of `--batch` sentences, `workers` batches in flight. Sentences are
shaped like the load generator's (`<run>-<n>|<text>`, the model embeds all of it).

With `--bare DIR` it is none of the gateway's code: a plain onnxruntime session on DIR's
model.onnx with the gateway's session options (`threads` intra-op threads, pool threads that
spin 50 µs: onnxruntime's default spinning measured half the speed on a busy 2-core machine,
which would make a ceiling no ceiling), the tokenizer padding each batch to its longest
input, mean pooling and L2 in numpy, one batch at a time; the
sentences are shaped like a large request's (`<run>-<n>|item <j>: <text>`). That is what the
`local-bulk` scenario holds the gateway's one request of 2,048 sentences to.

Runs in its own process, as the gateway would, and prints one JSON object: sentences/s, batch
latency percentiles and the CPU seconds this process used while measuring.

    python -m bench.local_model --batch 32 --duration 10
    python -m bench.local_model --bare /path/to/model-dir --batch 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.providers import UpstreamCall
from app.providers.local import LOCAL_MODELS, SPIN_MICROSECONDS, LocalConfig, LocalProvider
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
    return summary(latencies, batch, elapsed, cpu, config.threads, config.workers)


def bare_runner(model_dir: Path, threads: int) -> Callable[[list[str]], np.ndarray]:
    """A batch of texts to unit vectors the plain way: what a person would write first."""
    import onnxruntime
    from tokenizers import Tokenizer

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_MICROSECONDS))
    session = onnxruntime.InferenceSession(
        str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding()  # to each batch's longest input

    def run(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (hidden,) = session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        result: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return result

    return run


def measure_bare(model_dir: Path, batch: int, duration: float, max_batches: int) -> dict[str, Any]:
    threads = LocalConfig.model_fields["threads"].default  # the gateway's, for the same cores
    run_batch = bare_runner(model_dir, threads)
    run = uuid.uuid4().hex[:8]
    texts = [f"{run}-{n}|item {n}: {SHORT_TEXT}" for n in range(batch)]
    run_batch(texts)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    cpu_before, start = time.process_time(), time.perf_counter()
    while time.perf_counter() < deadline and len(latencies) < max_batches:
        n = len(latencies) * batch
        texts = [f"{run}-{n + j}|item {j}: {SHORT_TEXT}" for j in range(batch)]
        t0 = time.perf_counter()
        run_batch(texts)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    return summary(latencies, batch, elapsed, cpu, threads, 1)


def summary(
    latencies: list[float], batch: int, elapsed: float, cpu: float, threads: int, workers: int
) -> dict[str, Any]:
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
        "threads": threads,
        "workers": workers,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--max-batches", type=int, default=1_000_000, help="a bound on the count")
    parser.add_argument("--bare", type=Path, metavar="DIR", help="plain onnxruntime on DIR")
    args = parser.parse_args(argv)
    if args.bare is not None:
        result = measure_bare(args.bare, args.batch, args.duration, args.max_batches)
    else:
        result = asyncio.run(measure(args.batch, args.duration, args.max_batches))
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
