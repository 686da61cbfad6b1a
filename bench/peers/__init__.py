"""Other proxies measured side by side with this gateway, on the same fake upstreams.

A peer is one module here with a `start(bench) -> Target` that installs it if needed (into its
own directory under bench/, gitignored, or as a Debian package; never into this venv) and
starts it on 127.0.0.1 in front of `bench.main_url` / `bench.faulty_url`, serving the models
of servers.write_registry (a model it reaches another way goes in `Target.routes`). run.py
starts those named by `--peers` (`--litellm` still adds LiteLLM). To add one: a module and a
line in PEERS (and its display name in reports.PEER_LABELS).

- nginx: a plain reverse proxy with keep-alive upstream connections, the floor of what one
  proxy leg costs;
- portkey: Portkey's open-source AI gateway (Node), from npm;
- litellm: LiteLLM's proxy (Python), from PyPI, in its own venv (~750 MB);
- stack-floor: uvicorn + aiohttp forwarding bytes unchanged, with none of the gateway's work:
  what the gateway's own stack costs for one proxy leg;
- infinity: Infinity's embedding server (Python, PyPI, with the CPU build of torch, ~1.4 GB in
  bench/.peers/infinity/.venv), serving the local scenario's model directory: no proxy, so it is
  measured in `local` only.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.peers import infinity, litellm, nginx, portkey, stack_floor
from bench.session import Bench, Target

PEERS: dict[str, Callable[[Bench], Target]] = {
    "nginx": nginx.start,
    "portkey": portkey.start,
    "litellm": litellm.start,
    "stack-floor": stack_floor.start,
    "infinity": infinity.start,
}
# What a bare `--peers` starts: those that install in seconds (or need nothing).
DEFAULT_PEERS = ("nginx", "portkey", "stack-floor")
