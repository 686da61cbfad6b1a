"""Portkey's open-source AI gateway as a peer: installed from npm into bench/.peers, on Node.

Portkey routes by headers, not by model name: `x-portkey-provider: openai` with
`x-portkey-custom-host: <fake>/v1` sends a request to `<fake>/v1/embeddings` with the client's
`Authorization` as the provider key (Portkey's providerContext.getFullURL: custom host + the
provider's endpoint). Failover is a config header: a `fallback` strategy over the faulty fake
then the healthy one, no retries, as the gateway's bench-failover model. The version is pinned:
1.9.8 passes `encoding_format` through; 1.15.2 answered 500 to every embeddings call when tried
(shared notes). Nothing is fetched at run time once installed; `node` must be on the PATH.
start-server.js takes a port but no host, so loopback.cjs, preloaded, makes it listen on
127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.procs import Managed, free_port, run_bounded
from bench.servers import http_ok
from bench.session import BENCH, UPSTREAM_KEY, Bench, Target, log

PACKAGE = "@portkey-ai/gateway"
VERSION = "1.9.8"
HOME = BENCH / ".peers" / f"portkey-{VERSION}"
ENTRY = HOME / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
LOOPBACK_ONLY = Path(__file__).resolve().with_name("loopback.cjs")


def install(bench: Bench) -> None:
    package_json = ENTRY.parent.parent / "package.json"
    if package_json.exists() and json.loads(package_json.read_text())["version"] == VERSION:
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("Portkey needs node and npm: `make node-deps` installs them (Debian)")
    log(f"installing {PACKAGE}@{VERSION} into {HOME} (once)...")
    HOME.mkdir(parents=True, exist_ok=True)
    step = Managed(
        "portkey-install",
        [
            npm, "install",
            "--prefix", str(HOME),
            "--no-audit", "--no-fund", "--no-save",
            f"{PACKAGE}@{VERSION}",
        ],
        log_path=bench.workdir / "npm-portkey.log",
    )  # fmt: skip
    if run_bounded(step, timeout=bench.args.install_timeout) != 0 or not ENTRY.exists():
        raise RuntimeError(f"installing {PACKAGE}@{VERSION} failed:\n{step.log_tail()}")


def start(bench: Bench) -> Target:
    install(bench)
    node = shutil.which("node")
    assert node is not None  # install() checked
    port = free_port()
    proxy = Managed(
        "portkey",
        [node, "--require", str(LOOPBACK_ONLY), str(ENTRY), f"--port={port}", "--headless"],
        log_path=bench.workdir / "portkey.log",
        env={**os.environ, "NODE_ENV": "production"},
        cwd=bench.workdir,
    ).start()
    url = f"http://127.0.0.1:{port}"
    proxy.wait_ready(lambda: http_ok(url + "/"), timeout=60)

    def custom_host(base: str) -> str:
        return base + "/v1"

    headers = [
        "x-portkey-provider: openai",
        f"x-portkey-custom-host: {custom_host(bench.main_url)}",
        f"Authorization: Bearer {UPSTREAM_KEY}",
    ]
    fallback = {
        "strategy": {"mode": "fallback"},
        "targets": [
            {"provider": "openai", "custom_host": custom_host(base), "api_key": UPSTREAM_KEY}
            for base in (bench.faulty_url, bench.main_url)
        ],
    }
    failover = [f"x-portkey-config: {json.dumps(fallback, separators=(',', ':'))}"]
    endpoint = url + "/v1/embeddings"
    return Target(
        "portkey", endpoint, headers, proxy, routes={"bench-failover": (endpoint, failover)}
    )
