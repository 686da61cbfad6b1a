"""Closed-loop HTTP load generator: fixed concurrency, bounded in requests and in time.

Runs in its own process (so its CPU is not the measured server's) and prints one JSON object:
counts, statuses, elapsed seconds, latency percentiles and its own CPU time.

Every request carries inputs no other request has (`<run>-<n>|<text>`): the gateway joins
identical inputs that are in flight at the same time, so a load of one repeated text would
measure that shortcut instead of the proxy path. bench/fake_server.py ignores the part before
`|`, so the fake upstream still answers from its per-text cache and stays fast.

With `--check-vectors DIMS` each text also differs after the `|` (`... #<n mod 1024>`) and
every vector answered is compared, bit for bit, with the one the fake computes for that text
(tests/fakes/vectors.py): a gateway that merged requests into one upstream call and handed one
of them a neighbour's vector is counted in `vectors_wrong`.

    python -m bench.loadgen --url http://127.0.0.1:8000/v1/embeddings --model m \
        --concurrency 16 --duration 10 --header "Authorization: Bearer KEY"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

SHORT_TEXT = "The quick brown fox jumps over the lazy dog."
# Distinct texts cycle through this many, so the fake's per-text cache (4096) still holds them.
DISTINCT_TEXTS = 1024


def texts(n: int, inputs: int, distinct: bool = False) -> list[str]:
    """Request `n`'s texts as the fake answers them (after the `|` of each unique input)."""
    suffix = f" #{n % DISTINCT_TEXTS}" if distinct else ""
    if inputs == 0:
        return [SHORT_TEXT + suffix]
    return [f"item {j}: {SHORT_TEXT}{suffix}" for j in range(inputs)]


def make_body(
    run: str, n: int, model: str, inputs: int, encoding_format: str, distinct: bool = False
) -> bytes:
    """Request `n`'s body: one string when `inputs` is 0, else a list of `inputs` strings."""
    payload: dict[str, Any] = {"model": model, "encoding_format": encoding_format}
    unique = [f"{run}-{n}|{text}" for text in texts(n, inputs, distinct)]
    payload["input"] = unique[0] if inputs == 0 else unique
    return orjson.dumps(payload)


class VectorCheck:
    """Compares answered vectors with the fake's own, float32 bit for bit."""

    def __init__(self, model: str, dims: int) -> None:
        from tests.fakes.vectors import fake_vector  # only this mode needs numpy and the fakes

        self.expected = lambda text: fake_vector(model, text, dims).tobytes()
        self.checked = 0
        self.wrong = 0

    def check(self, n: int, inputs: int, body: bytes) -> None:
        import numpy as np

        wanted = texts(n, inputs, distinct=True)
        try:
            data = orjson.loads(body)["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.checked += len(wanted)
            self.wrong += len(wanted)
            return
        for item in data:
            self.checked += 1
            try:
                vector, index = item["embedding"], item["index"]
                got = (
                    base64.b64decode(vector)
                    if isinstance(vector, str)
                    else np.asarray(vector, dtype=np.float32).tobytes()
                )
                right = 0 <= index < len(wanted) and got == self.expected(wanted[index])
            except (KeyError, TypeError, ValueError):
                right = False
            self.wrong += not right
        self.wrong += abs(len(wanted) - len(data))  # missing or extra vectors


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    run = uuid.uuid4().hex[:8]
    limit_requests = args.requests if args.requests > 0 else None
    deadline = time.perf_counter() + args.duration if args.duration > 0 else None

    checker = None
    if args.check_vectors:
        checker = VectorCheck(args.vector_model or args.model, args.check_vectors)
    distinct = checker is not None
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    exceptions: Counter[str] = Counter()
    issued = 0
    start = time.perf_counter()
    last_done = start

    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    # No Accept-Encoding: no target is asked to spend CPU compressing for us.
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("Accept-Encoding",)
    ) as session:

        async def worker() -> None:
            nonlocal issued, last_done
            while True:
                if limit_requests is not None and issued >= limit_requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                n = issued
                issued += 1
                body = make_body(run, n, args.model, args.inputs, args.encoding_format, distinct)
                t0 = time.perf_counter()
                try:
                    async with session.post(args.url, data=body, headers=headers) as response:
                        answer = await response.read()
                        statuses[response.status] += 1
                    if checker is not None and response.status == 200:
                        checker.check(n, args.inputs, answer)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    exceptions[type(exc).__name__] += 1
                    continue
                finally:
                    last_done = time.perf_counter()
                latencies.append(last_done - t0)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    elapsed = max(last_done - start, 1e-9)
    latencies.sort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    completed = sum(statuses.values())
    return {
        "completed": completed,
        "ok": statuses.get(200, 0),
        "errors": completed - statuses.get(200, 0) + sum(exceptions.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "exceptions": dict(exceptions),
        "elapsed_s": elapsed,
        "rps": completed / elapsed,
        "latency_ms": {
            name: percentile(latencies, q) * 1000
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "loadgen_cpu_s": usage.ru_utime + usage.ru_stime,
        "vectors_checked": checker.checked if checker is not None else None,
        "vectors_wrong": checker.wrong if checker is not None else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--inputs", type=int, default=0, help="0: one string input; N: a list of N strings"
    )
    parser.add_argument("--encoding-format", choices=("float", "base64"), default="float")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=0, help="stop after N (0: no limit)")
    parser.add_argument("--duration", type=float, default=0, help="stop after S s (0: no limit)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    parser.add_argument("--header", action="append", default=[], metavar="'Name: value'")
    parser.add_argument("--out", help="write the JSON result here instead of stdout")
    parser.add_argument(
        "--check-vectors", type=int, default=0, metavar="DIMS", help="compare every vector"
    )
    parser.add_argument("--vector-model", help="the model the fake sees (default: --model)")
    args = parser.parse_args(argv)
    if args.requests <= 0 and args.duration <= 0:
        parser.error("give --requests or --duration (or both): every load must be bounded")
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")

    try:
        import uvloop  # the cheapest loop, so the load generator steals less CPU
    except ImportError:
        result = asyncio.run(run_load(args))
    else:
        result = uvloop.run(run_load(args))
    text = orjson.dumps(result).decode()
    if args.out:
        tmp = f"{args.out}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, args.out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
