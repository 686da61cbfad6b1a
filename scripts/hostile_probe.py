"""Measure what hostile traffic costs a real gateway process: memory and event-loop stalls.

    .venv/bin/python scripts/hostile_probe.py [--root DIR] [--only memory,body,header]

Starts tests/hostile_upstream.py in this process and `embeddings-gateway` (python -m app.cli)
from `--root` (default: this checkout; point it at an export of an older commit to compare),
all on 127.0.0.1, then reports:

- memory: the gateway's peak RSS growth (VmHWM) and lasting RSS growth around one 500 MB
  upstream body, and around a 0.5 MB gzip bomb that inflates to 500 MB (a fresh process each);
- body: the worst /healthz latency while a 16 MB body (2,000 x 8,000 characters) is handled,
  alone and four at once;
- header: the worst /healthz latency while one client sends an 80 MB header.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import GatewayProcess, model_entry, write_registry  # noqa: E402
from tests.hostile_upstream import DIMS, HostileUpstream  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            out[name] = int(value.split()[0])
    return out


def gateway_env(registry: Path) -> dict[str, str]:
    return {
        "MODELS_CONFIG": str(registry),
        "GATEWAY_API_KEYS": "",
        "RATE_LIMIT_PER_SECOND": "0",
        "LOG_LEVEL": "error",
        "REDIS_URL": "",
    }


def measure_memory(registry: Path, root: Path, model: str) -> str:
    with GatewayProcess(gateway_env(registry), cwd=root) as gateway:
        assert gateway.process is not None
        pid = gateway.process.pid
        for _ in range(3):
            post(gateway.url, "m-normal", ["warm", "up"])
        before = memory_kb(pid)
        status = post(gateway.url, model, "hello").status_code
        time.sleep(0.5)
        after = memory_kb(pid)
    peak = (after["VmHWM"] - before["VmHWM"]) / 1024
    kept = (after["VmRSS"] - before["VmRSS"]) / 1024
    return (
        f"{model}: HTTP {status}; baseline RSS {before['VmRSS'] / 1024:.0f} MB, "
        f"peak +{peak:.0f} MB, kept +{kept:.0f} MB"
    )


def post(url: str, model: str, inputs: object, timeout: float = 300) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/embeddings", json={"model": model, "input": inputs}, timeout=timeout
    )


def worst_healthz_while(url: str, work: list[threading.Thread]) -> float:
    """Poll /healthz while `work` runs; the slowest answer, in seconds."""
    worst = 0.0
    with httpx.Client(timeout=60) as client:
        client.get(f"{url}/healthz")
        for thread in work:
            thread.start()
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in work) and time.monotonic() < deadline:
            started = time.perf_counter()
            client.get(f"{url}/healthz")
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.005)
    for thread in work:
        thread.join(60)
    return worst


def big_body() -> bytes:
    rng = random.Random(0)
    items = []
    for _ in range(2000):
        text = " ".join(rng.choice(WORDS) for _ in range(1500))[:8000]
        items.append(text)
    return orjson.dumps({"model": "m-normal", "input": items})


def measure_body(registry: Path, root: Path) -> list[str]:
    body = big_body()
    lines = []
    with GatewayProcess(gateway_env(registry), cwd=root) as gateway:
        statuses: list[int] = []

        def send() -> None:
            response = httpx.post(
                f"{gateway.url}/v1/embeddings",
                content=body,
                headers={"content-type": "application/json"},
                timeout=300,
            )
            statuses.append(response.status_code)

        for clients in (1, 4):
            statuses.clear()
            work = [threading.Thread(target=send) for _ in range(clients)]
            worst = worst_healthz_while(gateway.url, work)
            lines.append(
                f"{len(body) / 1e6:.1f} MB body x{clients} (HTTP {sorted(set(statuses))}): "
                f"worst /healthz {worst * 1000:.0f} ms"
            )
    return lines


def measure_header(registry: Path, root: Path, size: int = 80 * 1024 * 1024) -> str:
    with GatewayProcess(gateway_env(registry), cwd=root) as gateway:
        answer: list[bytes] = []

        def send() -> None:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=120) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    piece = b"a" * (1024 * 1024)
                    for _ in range(size // len(piece)):
                        sock.sendall(piece)
                    sock.sendall(b"\r\n\r\n")
                with contextlib.suppress(OSError):
                    answer.append(sock.recv(64)[:12])

        worst = worst_healthz_while(gateway.url, [threading.Thread(target=send)])
    got = answer[0].decode(errors="replace") if answer and answer[0] else "connection closed"
    return f"{size // 2**20} MB header ({got!r}): worst /healthz {worst * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--only", default="memory,body,header")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with HostileUpstream() as upstream, tempfile.TemporaryDirectory() as tmp:
        provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": "k"}
        routes = {"m-normal": "normal", "m-huge": "huge", "m-bomb": "gzip-bomb"}
        models = {
            name: model_entry([{"provider": "hostile", "model": routed}], dimensions=DIMS)
            for name, routed in routes.items()
        }
        for model in models.values():
            model["routes"][0]["max_attempts"] = 1
        registry = write_registry(Path(tmp) / "models.yaml", {"hostile": provider}, models)
        print(f"gateway code from {args.root}")
        if "memory" in only:
            for model in ("m-huge", "m-bomb"):
                print(measure_memory(registry, args.root, model), flush=True)
        if "body" in only:
            for line in measure_body(registry, args.root):
                print(line, flush=True)
        if "header" in only:
            print(measure_header(registry, args.root), flush=True)


if __name__ == "__main__":
    main()
