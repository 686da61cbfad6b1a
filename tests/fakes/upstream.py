"""FakeUpstream: a fake embeddings provider on a real socket, in any protocol of protocols.py.

Every request is recorded; faults come from a FaultPlan; ``latency`` delays every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from tests.fakes.faults import Fault, FaultPlan, embedding_entries
from tests.fakes.protocols import wire_protocol
from tests.fakes.recording import RecordedRequest, lower_headers
from tests.fakes.server import ThreadedServer
from tests.fakes.vectors import Item, fake_vector
from tests.fakes.wire import BadRequest, EmbeddingCall


class FakeUpstream(ThreadedServer):
    """A fake upstream embeddings provider, served from a background thread.

    ``canonical_input`` maps each parsed input to the one the fake answers for (its vector and
    its usage): the benchmark makes every input unique and folds them back this way, so the fake
    keeps answering from its per-input cache.
    """

    def __init__(
        self,
        protocol: str,
        *,
        api_key: str | None = None,
        dims: dict[str, int] | None = None,
        default_dims: int = 16,
        host: str = "127.0.0.1",
        port: int = 0,
        max_inputs: int | None = None,
        record: bool = True,
        use_uvloop: bool = False,
        canonical_input: Callable[[Item], Item] | None = None,
    ) -> None:
        self.wire = wire_protocol(protocol)
        super().__init__(host=host, port=port, use_uvloop=use_uvloop)
        self.thread_name = f"fake-upstream-{protocol}"
        self.protocol: str = protocol
        self.api_key = api_key
        self.dims: dict[str, int] = dict(dims or {})
        self.default_dims = default_dims
        self.max_inputs = max_inputs
        self.record = record
        self.canonical_input = canonical_input
        self.latency: float = 0.0
        self.requests: list[RecordedRequest] = []
        # Inputs answered with a 400 naming them, as an upstream rejects an input it can't take.
        self.reject_inputs: set[str] = set()
        # Like NanoGPT's documented limit: embedding requests past this many in the last second
        # get a 429 (None: no limit).
        self.max_requests_per_second: float | None = None
        self.rate_limited = 0  # 429s answered because of max_requests_per_second
        self._admitted: deque[float] = deque()

        self._faults = FaultPlan()
        self._lock = threading.Lock()
        self._generation = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._hang_release = asyncio.Event()

    # -- public state ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.url + self.wire.base_path

    @property
    def embeddings_url(self) -> str:
        return self.url + self.wire.paths[0]

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def embedding_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and self.wire.matches(r.path)]

    def native_dims(self, model: str) -> int:
        return self.dims.get(model, self.default_dims)

    def expected_vector(
        self, model: str, item: str | Sequence[int], dimensions: int | None = None
    ) -> np.ndarray:
        """What this server returns for ``item`` (uses its per-model native dims)."""
        return fake_vector(model, item, self.native_dims(model), dimensions)

    def clear(self) -> None:
        """Forget recordings, queued and rate faults, latency and in-flight peaks; end hangs."""
        self._faults.clear()
        with self._lock:
            self.requests.clear()
            self.latency = 0.0
            self.reject_inputs = set()
            self.max_requests_per_second = None
            self.rate_limited = 0
            self._admitted.clear()
            # Requests still running belong to the old generation and no longer count.
            self._generation += 1
            self._in_flight = 0
            self._max_in_flight = 0
        self._wake_hangs()

    def add_fault(self, fault: Fault | str, times: int | None = 1) -> None:
        """Queue ``fault`` for the next ``times`` embedding requests (None: until clear())."""
        self._faults.add(fault, times)

    def set_fault_rate(self, fault: Fault | str | None, rate: float, seed: int = 0) -> None:
        """Make a deterministic fraction ``rate`` of embedding requests suffer ``fault``.

        The RNG advances on every embedding request (queued faults still win), so which requests
        fail depends only on their arrival order. ``rate=0`` or ``fault=None`` disables it.
        """
        self._faults.set_rate(fault, rate, seed)

    def on_stop(self) -> None:
        self._wake_hangs()

    def _wake_hangs(self) -> None:
        old, self._hang_release = self._hang_release, asyncio.Event()
        self.call_soon_in_loop(old.set)

    # -- request handling -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            generation = self._generation
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return await self._process(request)
        finally:
            with self._lock:
                if generation == self._generation:
                    self._in_flight -= 1

    async def _process(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            payload: Any = orjson.loads(raw) if raw else None
            valid_json = raw != b""
        except orjson.JSONDecodeError:
            payload, valid_json = None, False

        is_embedding = self.wire.matches(request.path)
        fault = self._faults.next() if is_embedding and request.method == "POST" else None
        if self.record:
            recorded = RecordedRequest(
                path=request.path,
                headers=lower_headers(request),
                json=payload,
                received_at=time.time(),
                method=request.method,
                fault=fault,
                query=dict(request.query),
            )
            with self._lock:
                self.requests.append(recorded)

        if self.latency > 0:
            await asyncio.sleep(self.latency)

        if not is_embedding:
            return self._error(404, f"no route for {request.path}")
        if request.method != "POST":
            return self._error(405, f"method {request.method} not allowed")
        if self._over_rate():
            return self._error(429, "rate limit exceeded", headers={"Retry-After": "1"})

        if fault is not None:
            if fault.kind == "drop":
                if request.transport is not None:
                    request.transport.close()
                # aiohttp discards a response for a closed transport: the client sees no bytes.
                return web.Response()
            if fault.kind == "status":
                return self._error(
                    fault.status, f"upstream fault {fault.status}", headers=fault.headers
                )
            if fault.kind == "non_json":
                return web.Response(body=b"<html>oops</html>", content_type="text/html")
            if fault.kind == "hang":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hang_release.wait(), fault.seconds)

        status, body = self._respond(request, payload, valid_json, fault)
        if fault is not None and fault.kind == "truncated":
            return await _send_truncated(request, status, body)
        return web.Response(body=body, status=status, content_type="application/json")

    def _respond(
        self, request: web.Request, payload: Any, valid_json: bool, fault: Fault | None
    ) -> tuple[int, bytes]:
        if self.api_key is not None and not self.wire.authorized(request.headers, self.api_key):
            return self.wire.unauthorized()
        try:
            if not valid_json:
                raise BadRequest("request body is not valid JSON")
            call = self._parse(payload, request)
        except BadRequest as exc:
            return exc.status, self.wire.error_body(exc.status, exc.message, exc.param)
        poisoned = [item for item in call.items if item in self.reject_inputs]
        if poisoned:
            message = f"input {poisoned[0]!r} is not allowed"
            return 400, self.wire.error_body(400, message, "input")
        entries = embedding_entries(
            call.model, call.items, call.native_dims, call.dimensions, call.base64, fault
        )
        return 200, self.wire.render(call, entries)

    def _over_rate(self) -> bool:
        limit = self.max_requests_per_second
        if limit is None:
            return False
        now = time.monotonic()
        with self._lock:
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= limit:
                self.rate_limited += 1
                return True
            self._admitted.append(now)
            return False

    def _parse(self, payload: Any, request: web.Request) -> EmbeddingCall:
        call = self.wire.parse_request(payload, self.native_dims, request.path, request.query)
        if self.canonical_input is not None:
            call = dataclasses.replace(call, items=[self.canonical_input(i) for i in call.items])
        if self.max_inputs is not None and len(call.items) > self.max_inputs:
            raise BadRequest(
                f"too many inputs: {len(call.items)} > {self.max_inputs}", param="input"
            )
        return call

    def _error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            body=self.wire.error_body(status, message),
            status=status,
            content_type="application/json",
            headers=dict(headers) if headers else None,
        )


async def _send_truncated(request: web.Request, status: int, body: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        # close() (unlike abort()) flushes the half body before the FIN.
        request.transport.close()
    return resp
