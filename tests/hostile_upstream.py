"""An OpenAI-compatible embeddings upstream that misbehaves on purpose, on a real socket.

The upstream model name picks the misbehaviour (every vector has `DIMS` floats):

- `normal`: a correct answer, usage = one token per input.
- `huge`: a 200 whose JSON body never ends, streamed 1 MiB at a time up to `HUGE_BYTES`.
- `gzip-bomb`: a 200 with `Content-Encoding: gzip`, ~0.5 MB on the wire, `BOMB_BYTES` inflated.
- `huge-error`: a 500 whose body is `HUGE_BYTES` of JSON, streamed.
- `usage-<n>`: a correct answer whose usage claims `n` prompt tokens (n may be negative).
- `per-input-<n>`: a correct answer whose usage bills `n` tokens for every input (a tokenizer
  that counts far more than cl100k), however the gateway batched them.
- `echo-key`: a 500 whose message repeats the caller's key upper-cased, in base64 and split.

Bodies are streamed, never built whole: a test can send 500 MB without holding it.
Run alone with `python -m tests.hostile_upstream PORT` (for scripts/hostile_probe.py).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import threading
import zlib
from functools import cache
from typing import Any

import orjson
from aiohttp import web

DIMS = 16
HUGE_BYTES = 500 * 1024 * 1024
BOMB_BYTES = 500 * 1024 * 1024
CHUNK = 1024 * 1024


def vectors_body(count: int, prompt_tokens: int) -> bytes:
    data = [
        {"object": "embedding", "index": i, "embedding": [0.25] * (DIMS - 1) + [float(i)]}
        for i in range(count)
    ]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": "x", "usage": usage})


@cache
def gzip_bomb() -> bytes:
    """A valid gzip stream of a JSON prefix and BOMB_BYTES of spaces (about 0.5 MB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b'{"object": "list", "data": [')]
    spaces = b" " * CHUNK
    for _ in range(BOMB_BYTES // CHUNK):
        parts.append(compressor.compress(spaces))
    parts.append(compressor.compress(b"]}"))
    parts.append(compressor.flush())
    return b"".join(parts)


class HostileUpstream:
    def __init__(self) -> None:
        self.port = 0
        self.calls: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileUpstream:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("hostile upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> HostileUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._startup())
        ready.set()
        loop.run_forever()
        loop.close()

    async def _startup(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        model, inputs = body["model"], body["input"]
        count = len(inputs) if isinstance(inputs, list) else 1
        self.calls.append(model)
        if model == "normal":
            return _json(vectors_body(count, count))
        if model.startswith("per-input-"):
            return _json(vectors_body(count, count * int(model.removeprefix("per-input-"))))
        if model.startswith("usage-"):
            return _json(vectors_body(count, int(model.removeprefix("usage-"))))
        if model == "huge":
            return await _stream(request, 200, b'{"object": "list", "data": [{"embedding": [')
        if model == "huge-error":
            return await _stream(request, 500, b'{"error": {"message": "')
        if model == "gzip-bomb":
            return web.Response(
                body=gzip_bomb(),
                headers={"content-type": "application/json", "content-encoding": "gzip"},
            )
        if model == "echo-key":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            b64 = base64.b64encode(key.encode()).decode()
            split = " ".join(key[i : i + 4] for i in range(0, len(key), 4))
            message = f"bad key {key.upper()} (b64 {b64}) split {split}; " + "x" * 5000
            return web.json_response({"error": {"message": message}}, status=500)
        return web.json_response({"error": {"message": f"unknown model {model}"}}, status=404)


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def _stream(request: web.Request, status: int, head: bytes) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers={"content-type": "application/json"})
    await response.prepare(request)
    await response.write(head)
    filler = b"0.0, " * (CHUNK // 5)
    try:
        for _ in range(HUGE_BYTES // len(filler)):
            await response.write(filler)
    except (ConnectionError, RuntimeError):  # the gateway hung up: that is the point
        return response
    await response.write_eof()
    return response


def main() -> None:
    upstream = HostileUpstream()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(upstream._startup(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    print(f"hostile upstream on {upstream.base_url}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
