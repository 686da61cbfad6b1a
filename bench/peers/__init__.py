"""Other gateways measured side by side with this one, on the same fake upstreams.

A peer is one module here with a `start(bench) -> Target` that installs it if needed (into its
own venv or directory under bench/, never this one) and starts it on 127.0.0.1 in front of
`bench.main_url` / `bench.faulty_url`, serving the models of servers.write_registry; run.py
starts each peer named on the command line (`--litellm`). To add one (Portkey, nginx as the
floor of a proxy's cost): a module, a line in PEERS, a flag in run.parse_args, and its name in
session.TARGETS for the ratio table.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.peers import litellm
from bench.session import Bench, Target

PEERS: dict[str, Callable[[Bench], Target]] = {
    "litellm": litellm.start,
}
