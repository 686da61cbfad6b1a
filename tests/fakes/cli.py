"""The fakes as a standalone process, for benchmarks and manual runs.

python -m tests.fakes --protocol openai --port 9001 --dims 1536 --key KEY
# prints "listening on http://127.0.0.1:PORT" and serves until SIGTERM / Ctrl-C
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence

from tests.fakes.protocols import PROTOCOLS
from tests.fakes.server import ThreadedServer
from tests.fakes.upstream import FakeUpstream


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def serve_until_signalled(server: ThreadedServer) -> None:
    """Start, announce the address on stdout, and serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    server.start()
    print(f"listening on {server.url}", flush=True)
    try:
        while not stop.wait(1.0):  # a timed wait, so signal handlers always get to run
            pass
    finally:
        server.stop()


def _parse_model_dims(values: list[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for value in values:
        model, sep, n = value.rpartition("=")
        if not sep or not model:
            raise argparse.ArgumentTypeError(f"--model-dims expects MODEL=N, got {value!r}")
        dims[model] = int(n)
    return dims


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake upstream embeddings provider.")
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dims", type=int, default=16, help="native dims for any model")
    parser.add_argument(
        "--model-dims", action="append", default=[], metavar="MODEL=N", help="per-model dims"
    )
    parser.add_argument("--key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--max-inputs", type=int, default=None)
    parser.add_argument(
        "--record", action="store_true", help="keep recordings (unbounded memory; off by default)"
    )
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)

    server = FakeUpstream(
        args.protocol,
        api_key=args.key,
        dims=_parse_model_dims(args.model_dims),
        default_dims=args.dims,
        host=args.host,
        port=args.port,
        max_inputs=args.max_inputs,
        record=args.record,
        use_uvloop=uvloop_available() and not args.no_uvloop,
    )
    server.latency = args.latency
    serve_until_signalled(server)
    return 0
