"""tests/fake_upstream.py's FakeUpstream, served standalone with two benchmark-only additions.

* `--fault-rate R --fault-status S`: a deterministic fraction R of embedding requests answer
  HTTP S (the fake's CLI has no such option; its `set_fault_rate` does it).
* Inputs are looked up by the text after the first `|`: bench/loadgen.py makes every input
  unique (`<run>-<n>|text`) so the gateway cannot join identical in-flight inputs, and this
  keeps the fake answering from its per-text cache, as fast as it is with repeated inputs.

    python -m bench.fake_server --port 0 --dims 1536 --key KEY --fault-rate 0.1
    # prints "listening on http://127.0.0.1:PORT" and serves until SIGTERM / Ctrl-C
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import tests.fake_upstream as fake
from tests.fake_upstream import FakeUpstream, Fault


def _fold_unique_prefixes() -> bool:
    """Make the fake key its vectors on the text after `|`; False if the fake changed shape."""
    parse = getattr(fake, "_parse_openai_input", None)
    if parse is None:
        return False

    def parse_folded(value: Any) -> list[Any]:
        return [
            item.partition("|")[2] or item if isinstance(item, str) else item
            for item in parse(value)
        ]

    # _openai_body looks the parser up in the module at call time, so this reroutes it.
    fake._parse_openai_input = parse_folded
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-style upstream for benchmarks.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dims", type=int, default=1536, help="native dims for every model")
    parser.add_argument("--key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--max-inputs", type=int, default=2048)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-status", type=int, default=500)
    args = parser.parse_args(argv)

    if not _fold_unique_prefixes():
        print("warning: could not fold unique input prefixes; the fake will be slower")
    try:
        import uvloop  # noqa: F401

        use_uvloop = True
    except ImportError:
        use_uvloop = False
    server = FakeUpstream(
        "openai",
        api_key=args.key,
        default_dims=args.dims,
        port=args.port,
        max_inputs=args.max_inputs,
        record=False,  # recordings grow without bound under load
        use_uvloop=use_uvloop,
    )
    if args.fault_rate > 0:
        server.set_fault_rate(Fault.http_status(args.fault_status), args.fault_rate)

    fake.serve_until_signalled(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
