"""Micro-benchmark: an upstream's JSON body (rows x dims) → the client's base64 strings.

Compares, on the same body, best of `--repeat` runs each:

* gateway -- what the gateway does, with its own functions: `parse_embeddings` (the body to a
             checked float32 matrix: simdjson straight into numpy, SIMD base64) and then
             `to_base64_rows`;
* plain   -- the obvious Python: `json.loads`, then per row `struct.pack` + `base64.b64encode`
             (for a base64 upstream, `b64decode` + `struct.unpack` first);

for an upstream that sends floats (what OpenAI-style upstreams send by default) and one that
sends base64. The gateway's output is checked equal to the plain way's before it is timed.

    python -m bench.encoding [--rows 2048] [--dims 1536] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from app.encoding import to_base64_rows
from app.providers.validation import parse_embeddings

Way = Callable[[bytes, int, int], list[str]]


def upstream_body(rows: int, dims: int, *, b64: bool, seed: int = 0) -> bytes:
    """An OpenAI-style body as tests/fakes writes it: unit float32 vectors, sent as
    float64 reprs of the float32 values (up to 17 significant digits) or as base64."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dims)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    data = []
    for index, row in enumerate(matrix):
        embedding: Any = (
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
            if b64
            else row.astype(np.float64).tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": "bench",
            "usage": {"prompt_tokens": rows, "total_tokens": rows},
        }
    )


def gateway_way(body: bytes, rows: int, dims: int) -> list[str]:
    return to_base64_rows(parse_embeddings(body, rows, dims)[0])


def plain_way(body: bytes, rows: int, dims: int) -> list[str]:
    layout = struct.Struct(f"<{dims}f")
    out: list[str] = [""] * rows
    for item in json.loads(body)["data"]:
        embedding = item["embedding"]
        if isinstance(embedding, str):
            embedding = layout.unpack(base64.b64decode(embedding))
        out[item["index"]] = base64.b64encode(layout.pack(*embedding)).decode("ascii")
    return out


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()  # start each run from the same heap, not after another run's garbage
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(rows: int, dims: int, repeat: int) -> dict[str, dict[str, float]]:
    """Seconds per body for each way and upstream format, plus the gateway's steps."""
    ways: dict[str, Way] = {"gateway": gateway_way, "plain": plain_way}
    results: dict[str, dict[str, float]] = {}
    for upstream in ("float", "base64"):
        body = upstream_body(rows, dims, b64=upstream == "base64")
        expected = plain_way(body, rows, dims)
        timings: dict[str, float] = {}
        for name, way in ways.items():
            if way(body, rows, dims) != expected:
                raise AssertionError(f"{name} way disagrees with the plain way ({upstream})")
            timings[name] = best_of(lambda way=way, body=body: way(body, rows, dims), repeat)
        # Where the gateway's time goes, step by step.
        vectors = parse_embeddings(body, rows, dims)[0]
        timings["step: parse_embeddings"] = best_of(
            lambda body=body: parse_embeddings(body, rows, dims), repeat
        )
        timings["step: to_base64_rows"] = best_of(
            lambda vectors=vectors: to_base64_rows(vectors), repeat
        )
        timings["body_mb"] = len(body) / 1e6
        results[upstream] = timings
    return results


def report(results: dict[str, dict[str, float]], rows: int, dims: int) -> str:
    lines = [f"Micro-benchmark: upstream JSON ({rows} x {dims}) -> client base64, best of runs"]
    for upstream, timings in results.items():
        lines.append(f"  upstream sends {upstream} ({timings['body_mb']:.1f} MB body):")
        plain = timings["plain"]
        for name, seconds in timings.items():
            if name == "body_mb":
                continue
            ratio = f"  {plain / seconds:5.1f}x plain" if not name.startswith("step") else ""
            lines.append(f"    {name:<28} {seconds * 1000:9.1f} ms{ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the timings as JSON too")
    args = parser.parse_args(argv)
    results = run(args.rows, args.dims, args.repeat)
    print(report(results, args.rows, args.dims), flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
