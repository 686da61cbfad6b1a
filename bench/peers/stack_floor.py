"""The gateway's own stack with none of the gateway's work, as a peer (`stack_floor_app`):
what uvicorn, uvloop and aiohttp cost per request for one proxy leg, measured on the same loads
as the gateway, so the report shows how much of the gateway's CPU is its own code."""

from __future__ import annotations

import os
import sys

from bench.procs import Managed, free_port
from bench.servers import http_ok
from bench.session import ROOT, UPSTREAM_KEY, Bench, Target


def start(bench: Bench) -> Target:
    port = free_port()
    proxy = Managed(
        "stack-floor",
        [sys.executable, "-m", "bench.peers.stack_floor_app", str(port), bench.main_url],
        log_path=bench.workdir / "stack-floor.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    url = f"http://127.0.0.1:{port}"
    proxy.wait_ready(lambda: http_ok(url + "/healthz"), timeout=30)
    return Target(
        "stack-floor", url + "/v1/embeddings", [f"Authorization: Bearer {UPSTREAM_KEY}"], proxy
    )
