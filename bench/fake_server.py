"""The fake OpenAI-style upstream (tests/fakes), served standalone with benchmark additions.

* `--fault-rate R --fault-status S`: a deterministic fraction R of embedding requests answer
  HTTP S (the fakes' CLI has no such option; `FakeUpstream.set_fault_rate` does it).
* `--max-requests-per-second N`: embedding requests past N in the last second get a 429, as
  NanoGPT documents for its API (`FakeUpstream.max_requests_per_second`).
* Inputs are answered for the text after the first `|`: bench/loadgen.py makes every input
  unique (`<run>-<n>|text`) so the gateway cannot join identical in-flight inputs, and this
  keeps the fake answering from its per-text cache, as fast as it is with repeated inputs.
* `GET /bench/stats` answers `{"calls": ..., "inputs": ..., "rate_limited": ...}`: embedding
  requests received, inputs parsed and 429s for the rate so far, so the benchmark can count
  upstream calls per client request (micro-batching) from outside the process.

    python -m bench.fake_server --port 0 --dims 1536 --key KEY --fault-rate 0.1
    # prints "listening on http://127.0.0.1:PORT" and serves until SIGTERM / Ctrl-C
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import FakeUpstream, Fault, Item, serve_until_signalled, uvloop_available

STATS_PATH = "/bench/stats"


def fold_unique_prefix(item: Item) -> Item:
    """`<run>-<n>|text` -> `text`; anything without a prefix is left alone."""
    if isinstance(item, str):
        return item.partition("|")[2] or item
    return item


class CountingUpstream(FakeUpstream):
    """A FakeUpstream that counts what it received. The counters are only touched on the
    server's event loop thread, so they need no lock."""

    def __init__(self, protocol: str, **kwargs: Any) -> None:
        super().__init__(protocol, canonical_input=self._count_input, **kwargs)
        self.calls = 0
        self.inputs = 0

    def _count_input(self, item: Item) -> Item:
        self.inputs += 1
        return fold_unique_prefix(item)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == STATS_PATH:
            stats = {"calls": self.calls, "inputs": self.inputs, "rate_limited": self.rate_limited}
            return web.Response(body=orjson.dumps(stats), content_type="application/json")
        if request.method == "POST" and self.wire.matches(request.path):
            self.calls += 1
        return await super().handle(request)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-style upstream for benchmarks.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dims", type=int, default=1536, help="native dims for every model")
    parser.add_argument("--key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--max-inputs", type=int, default=2048)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-status", type=int, default=500)
    parser.add_argument(
        "--max-requests-per-second", type=float, default=None, help="429 past N calls a second"
    )
    args = parser.parse_args(argv)

    server = CountingUpstream(
        "openai",
        api_key=args.key,
        default_dims=args.dims,
        port=args.port,
        max_inputs=args.max_inputs,
        record=False,  # recordings grow without bound under load
        use_uvloop=uvloop_available(),
    )
    if args.fault_rate > 0:
        server.set_fault_rate(Fault.http_status(args.fault_status), args.fault_rate)
    server.max_requests_per_second = args.max_requests_per_second

    serve_until_signalled(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
