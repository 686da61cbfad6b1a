"""Which of the gateway's files one embeddings request runs code in, from the ASGI entry to the
upstream call and back: `python scripts/request_path.py [--redis]` (from the repository's root).

A real gateway (uvicorn in a thread, the CLI's HTTP protocol) in front of a fake upstream on
127.0.0.1; one warm-up request, then one request under `sys.setprofile` on the server's thread,
which records every function of `app/` that runs until the response is sent. By default a
static key and no Redis: the shortest path a request takes. `--redis` starts a redis-server and
sends the request with a managed key that has a rate limit, a token limit and a budget: the
longest common path (per-IP limit, key lookup, the key's policy beside the cache lookup, cache
write, usage). docs/architecture.md quotes its output.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import FakeUpstream  # noqa: E402
from tests.harness import ThreadedGateway, model_entry, write_registry  # noqa: E402
from tests.keys_support import ADMIN_TOKEN, create_key  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

STATIC_KEY = "sk-request-path-0001"
APP = str(ROOT / "app") + "/"


def main(redis: bool) -> None:
    seen: dict[str, int] = {}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(APP):
            seen[name] = seen.get(name, 0) + 1

    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(FakeUpstream("openai", api_key="upstream-key"))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": "upstream-key"}
        models = {"m": model_entry([{"provider": "up", "model": "up-m"}])}
        settings: dict[str, Any] = {
            "MODELS_CONFIG": str(write_registry(tmp / "models.yaml", {"up": provider}, models)),
            "GATEWAY_API_KEYS": STATIC_KEY,
        }
        if redis:
            server = stack.enter_context(RedisServer())
            settings.update(REDIS_URL=server.url, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN)
        gateway = stack.enter_context(ThreadedGateway(**settings))
        key = STATIC_KEY
        if redis:
            policy = {"rate_limit_per_second": 100, "tokens_per_minute": 10**6, "budget_usd": 10}
            key = create_key(gateway.url, **policy)["key"]
        app = gateway.server.config.loaded_app

        async def traced(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not scope["path"].endswith("/embeddings"):
                await app(scope, receive, send)
                return
            sys.setprofile(profile)
            try:
                await app(scope, receive, send)
            finally:
                sys.setprofile(None)

        for number in range(2):
            if number == 1:  # the first request warms up; the second is recorded
                # Each new connection's protocol takes the app from here.
                gateway.server.config.loaded_app = traced
            answer = httpx.post(
                f"{gateway.url}/v1/embeddings",
                headers={"authorization": f"Bearer {key}", "connection": "close"},
                json={"model": "m", "input": f"one request's path {number}"},
                timeout=10,
            )
            answer.raise_for_status()
    files = sorted(seen)
    for name in files:
        print(f"{seen[name]:5d}  {name.removeprefix(str(ROOT) + '/')}")
    print(f"{len(files)} files")


if __name__ == "__main__":
    main(redis="--redis" in sys.argv[1:])
