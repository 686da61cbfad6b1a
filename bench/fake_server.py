"""The fake OpenAI-style upstream (tests/fakes), served standalone with two benchmark additions.

* `--fault-rate R --fault-status S`: a deterministic fraction R of embedding requests answer
  HTTP S (the fakes' CLI has no such option; `FakeUpstream.set_fault_rate` does it).
* Inputs are answered for the text after the first `|`: bench/loadgen.py makes every input
  unique (`<run>-<n>|text`) so the gateway cannot join identical in-flight inputs, and this
  keeps the fake answering from its per-text cache, as fast as it is with repeated inputs.

    python -m bench.fake_server --port 0 --dims 1536 --key KEY --fault-rate 0.1
    # prints "listening on http://127.0.0.1:PORT" and serves until SIGTERM / Ctrl-C
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tests.fakes import FakeUpstream, Fault, Item, serve_until_signalled, uvloop_available


def fold_unique_prefix(item: Item) -> Item:
    """`<run>-<n>|text` -> `text`; anything without a prefix is left alone."""
    if isinstance(item, str):
        return item.partition("|")[2] or item
    return item


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-style upstream for benchmarks.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dims", type=int, default=1536, help="native dims for every model")
    parser.add_argument("--key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--max-inputs", type=int, default=2048)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-status", type=int, default=500)
    args = parser.parse_args(argv)

    server = FakeUpstream(
        "openai",
        api_key=args.key,
        default_dims=args.dims,
        port=args.port,
        max_inputs=args.max_inputs,
        record=False,  # recordings grow without bound under load
        use_uvloop=uvloop_available(),
        canonical_input=fold_unique_prefix,
    )
    if args.fault_rate > 0:
        server.set_fault_rate(Fault.http_status(args.fault_status), args.fault_rate)

    serve_until_signalled(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
