"""The floor of this gateway's own stack for one proxy leg: uvicorn (httptools, uvloop) with an
aiohttp client to the upstream, forwarding the request body and the answer unchanged.

It does nothing a gateway does (no auth, no limits, no parsing, no re-encoding, no logs, no
metrics), so its CPU per request is what the stack costs before any of the gateway's work:
the part of the gateway's figure that no change to the gateway's own code can remove.
Run: `python -m bench.peers.stack_floor_app PORT UPSTREAM_BASE_URL`.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]


class Forward:
    def __init__(self, upstream: str) -> None:
        self._url = upstream + "/v1/embeddings"
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
        assert self._session is not None
        async with self._session.post(
            self._url,
            data=bytes(body),
            headers={"authorization": authorization, "content-type": "application/json"},
        ) as answer:
            data = await answer.read()
            status = answer.status
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Kept-alive connections, as many as the gateway's pool keeps per upstream.
                connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=None)
                self._session = aiohttp.ClientSession(connector=connector)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        Forward(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
