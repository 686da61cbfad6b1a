"""Fake upstream embedding providers: real HTTP servers on 127.0.0.1 for tests and benchmarks.

Two wire protocols are spoken:

* ``"openai"`` -- ``POST /v1/embeddings`` (also ``/api/v1/embeddings``), the shape used by OpenAI,
  NanoGPT and AI/ML API, including ``encoding_format: "base64"``.
* ``"nugen"`` -- ``POST /api/v3/inference/embeddings`` (also ``/inference/embeddings``), Nugen's
  shape: string inputs only, float vectors only, ``{"detail": ...}`` errors.

Vectors are deterministic (see :func:`fake_vector`), so tests can compute exactly what the gateway
should return. Every request is recorded, and faults (error statuses, hangs, dropped connections,
truncated or malformed bodies) can be injected per request or at a deterministic rate.

The server runs on its own event loop in a daemon thread, so sync and async tests can share it::

    with FakeUpstream("openai", api_key="k", dims={"big": 1536}) as up:
        up.add_fault(Fault.http_status(429, {"Retry-After": "1"}))
        ...  # point the gateway at up.base_url

Standalone (for benchmarks)::

    python -m tests.fake_upstream --protocol openai --port 9001 --dims 1536 --key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import orjson
from aiohttp import web

__all__ = [
    "FAULT_KINDS",
    "PROTOCOLS",
    "FakeUpstream",
    "Fault",
    "RecordedRequest",
    "fake_token_count",
    "fake_vector",
]

PROTOCOLS: tuple[str, ...] = ("openai", "nugen")

EMBEDDING_PATHS: dict[str, frozenset[str]] = {
    "openai": frozenset({"/v1/embeddings", "/api/v1/embeddings"}),
    "nugen": frozenset({"/api/v3/inference/embeddings", "/inference/embeddings"}),
}
BASE_PATHS: dict[str, str] = {"openai": "/v1", "nugen": "/api/v3"}

FAULT_KINDS: frozenset[str] = frozenset(
    {
        "status",
        "hang",
        "non_json",
        "fewer_vectors",
        "wrong_dims",
        "nan",
        "shuffled",
        "drop",
        "truncated",
    }
)
# Faults that only alter an otherwise successful response body.
_BODY_FAULTS = frozenset({"fewer_vectors", "wrong_dims", "nan", "shuffled"})

# Bounded: a cached 3072-dim float fragment is ~60 KB, so this stays well under a few hundred MB.
_CACHE_SIZE = 4096

Item = str | tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# Deterministic vectors and token counts
# ---------------------------------------------------------------------------------------------


def _item_key(item: str | Sequence[int]) -> Item:
    return item if isinstance(item, str) else tuple(int(i) for i in item)


def _item_text(key: Item) -> str:
    if isinstance(key, str):
        return key
    return "tokens:" + ",".join(map(str, key))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cached_vector(
    model: str, key: Item, native_dims: int, requested_dims: int | None
) -> np.ndarray:
    digest = hashlib.sha256((model + "\x00" + _item_text(key)).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    vec = rng.standard_normal(native_dims)
    vec /= np.linalg.norm(vec)
    if requested_dims is not None and requested_dims < native_dims:
        vec = vec[:requested_dims]
        vec = vec / np.linalg.norm(vec)
    out = vec.astype(np.float32)
    # Shared between callers through the cache, so it must never be mutated.
    out.flags.writeable = False
    return out


def fake_vector(
    model: str,
    item: str | Sequence[int],
    native_dims: int,
    requested_dims: int | None = None,
) -> np.ndarray:
    """The exact float32 vector the fake returns for ``item`` (a text or a token-id list).

    Seeded from the first 8 bytes (big-endian) of sha256(``model + "\\x00" + text``), where a
    token list's text is ``"tokens:" + ",".join(ids)``; ``standard_normal(native_dims)`` is
    L2-normalised, then truncated to ``requested_dims`` and re-normalised (Matryoshka-like).
    """
    if requested_dims is not None and not 1 <= requested_dims <= native_dims:
        raise ValueError(f"requested_dims must be in [1, {native_dims}], got {requested_dims}")
    return _cached_vector(model, _item_key(item), native_dims, requested_dims).copy()


def fake_token_count(item: str | Sequence[int]) -> int:
    """Usage tokens for one input: whitespace-separated words, or token ids; at least 1."""
    if isinstance(item, str):
        return max(1, len(item.split()))
    return max(1, len(item))


def _float_json(vec: np.ndarray) -> bytes:
    # float64 repr of each float32 value, which is what OpenAI puts on the wire.
    return orjson.dumps(vec.astype(np.float64).tolist())


def _base64_json(vec: np.ndarray) -> bytes:
    return orjson.dumps(base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii"))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cached_fragment(
    model: str, key: Item, native_dims: int, requested_dims: int | None, b64: bool
) -> orjson.Fragment:
    vec = _cached_vector(model, key, native_dims, requested_dims)
    return orjson.Fragment(_base64_json(vec) if b64 else _float_json(vec))


def _nan_fragment(vec: np.ndarray, b64: bool) -> orjson.Fragment:
    if b64:
        poisoned = vec.copy()
        poisoned[0] = np.nan
        return orjson.Fragment(_base64_json(poisoned))
    # orjson refuses to emit NaN, so splice the bare literal into the serialised array.
    rest = _float_json(vec[1:])
    return orjson.Fragment(b"[NaN]" if rest == b"[]" else b"[NaN," + rest[1:])


# ---------------------------------------------------------------------------------------------
# Faults and recordings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; see the module docstring and FAULT_KINDS."""

    kind: str
    status: int = 500
    headers: Mapping[str, str] | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")

    @classmethod
    def http_status(cls, status: int = 500, headers: Mapping[str, str] | None = None) -> Fault:
        return cls("status", status=status, headers=headers)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        return cls.http_status(429, {"Retry-After": retry_after} if retry_after else None)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        return cls("hang", seconds=seconds)

    @classmethod
    def non_json(cls) -> Fault:
        return cls("non_json")

    @classmethod
    def fewer_vectors(cls) -> Fault:
        return cls("fewer_vectors")

    @classmethod
    def wrong_dims(cls) -> Fault:
        return cls("wrong_dims")

    @classmethod
    def nan(cls) -> Fault:
        return cls("nan")

    @classmethod
    def shuffled(cls) -> Fault:
        return cls("shuffled")

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def truncated(cls) -> Fault:
        return cls("truncated")


@dataclass
class RecordedRequest:
    """One request as received (header names lower-cased; json is None if the body wasn't JSON)."""

    path: str
    headers: dict[str, str]
    json: Any | None
    received_at: float
    method: str = "POST"
    fault: Fault | None = field(default=None, compare=False)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


_OPENAI_ERROR_TYPES: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeUpstream:
    """A fake upstream embeddings provider on a real socket, served from a background thread."""

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
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        self.protocol: str = protocol
        self.api_key = api_key
        self.dims: dict[str, int] = dict(dims or {})
        self.default_dims = default_dims
        self.host = host
        self.max_inputs = max_inputs
        self.record = record
        self.latency: float = 0.0
        self.requests: list[RecordedRequest] = []

        self._requested_port = port
        self._use_uvloop = use_uvloop
        self._paths = EMBEDDING_PATHS[protocol]
        self._lock = threading.Lock()
        self._faults: deque[list[Any]] = deque()  # [Fault, remaining uses or None]
        self._rate_fault: Fault | None = None
        self._rate: float = 0.0
        self._rate_rng = random.Random(0)
        self._generation = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._hang_release = asyncio.Event()

        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=f"fake-upstream-{self.protocol}", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=15):
            raise RuntimeError("fake upstream did not start within 15 s")
        if self._startup_error is not None:
            self.stop()
            raise RuntimeError("fake upstream failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and loop.is_running():
            self._wake_hangs()
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> FakeUpstream:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        if self._use_uvloop:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start() in the calling thread
            self._startup_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown timeout: hung handlers are cancelled instead of delaying stop().
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        assert self._sock is not None
        await web.SockSite(runner, self._sock, backlog=1024).start()
        self._runner = runner

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- public state ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("FakeUpstream not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """Scheme, host and port only: ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + BASE_PATHS[self.protocol]

    @property
    def embeddings_url(self) -> str:
        return self.url + min(self._paths, key=len)

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
            return [r for r in self.requests if r.method == "POST" and r.path in self._paths]

    def native_dims(self, model: str) -> int:
        return self.dims.get(model, self.default_dims)

    def expected_vector(
        self, model: str, item: str | Sequence[int], dimensions: int | None = None
    ) -> np.ndarray:
        """What this server returns for ``item`` (uses its per-model native dims)."""
        return fake_vector(model, item, self.native_dims(model), dimensions)

    def clear(self) -> None:
        """Forget recordings, queued and rate faults, latency and in-flight peaks; end hangs."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._rate_fault = None
            self._rate = 0.0
            self.latency = 0.0
            # Requests still running belong to the old generation and no longer count.
            self._generation += 1
            self._in_flight = 0
            self._max_in_flight = 0
        self._wake_hangs()

    def add_fault(self, fault: Fault | str, times: int | None = 1) -> None:
        """Queue ``fault`` for the next ``times`` embedding requests (None: until clear())."""
        if isinstance(fault, str):
            fault = Fault(fault)
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._faults.append([fault, times])

    def set_fault_rate(self, fault: Fault | str | None, rate: float, seed: int = 0) -> None:
        """Make a deterministic fraction ``rate`` of embedding requests suffer ``fault``.

        The RNG advances on every embedding request (queued faults still win), so which requests
        fail depends only on their arrival order. ``rate=0`` or ``fault=None`` disables it.
        """
        if isinstance(fault, str):
            fault = Fault(fault)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._rate_fault = fault if rate > 0 else None
            self._rate = rate if fault is not None else 0.0
            self._rate_rng = random.Random(seed)

    def _wake_hangs(self) -> None:
        old, self._hang_release = self._hang_release, asyncio.Event()
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(old.set)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            rate_hit = self._rate > 0 and self._rate_rng.random() < self._rate
            if self._faults:
                entry = self._faults[0]
                fault: Fault = entry[0]
                if entry[1] is not None:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._faults.popleft()
                return fault
            return self._rate_fault if rate_hit else None

    # -- request handling -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
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

        is_embedding = request.path in self._paths
        fault = self._next_fault() if is_embedding and request.method == "POST" else None
        if self.record:
            rec = RecordedRequest(
                path=request.path,
                headers=_lower_headers(request),
                json=payload,
                received_at=time.time(),
                method=request.method,
                fault=fault,
            )
            with self._lock:
                self.requests.append(rec)

        if self.latency > 0:
            await asyncio.sleep(self.latency)

        if not is_embedding:
            return self._error(404, f"no route for {request.path}")
        if request.method != "POST":
            return self._error(405, f"method {request.method} not allowed")

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
        auth = request.headers.get("Authorization")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return 401, self._error_body(401, "Invalid API key")
        try:
            if not valid_json:
                raise _BadRequest("request body is not valid JSON")
            if self.protocol == "openai":
                return 200, self._openai_body(payload, fault)
            return 200, self._nugen_body(payload, fault)
        except _BadRequest as exc:
            return exc.status, self._error_body(exc.status, exc.message, exc.param)

    def _parse_common(self, payload: Any) -> tuple[str, int, int | None]:
        if not isinstance(payload, dict):
            raise _BadRequest("request body must be a JSON object")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("model is required and must be a string", param="model")
        native = self.native_dims(model)
        requested = payload.get("dimensions")
        if requested is not None:
            if not isinstance(requested, int) or isinstance(requested, bool):
                raise _BadRequest("dimensions must be an integer", param="dimensions")
            if not 1 <= requested <= native:
                raise _BadRequest(
                    f"dimensions must be between 1 and {native} for model {model}",
                    param="dimensions",
                )
        if "input" not in payload:
            raise _BadRequest("input is required", param="input")
        return model, native, requested

    def _check_count(self, items: list[Item]) -> None:
        if self.max_inputs is not None and len(items) > self.max_inputs:
            raise _BadRequest(f"too many inputs: {len(items)} > {self.max_inputs}", param="input")

    def _openai_body(self, payload: Any, fault: Fault | None) -> bytes:
        model, native, requested = self._parse_common(payload)
        items = _parse_openai_input(payload["input"])
        self._check_count(items)
        fmt = payload.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise _BadRequest(
                "encoding_format must be 'float' or 'base64'", param="encoding_format"
            )
        b64 = fmt == "base64"
        embeddings = _embeddings(model, items, native, requested, b64, fault)
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i, "embedding": emb}
            for i, emb in enumerate(embeddings)
        ]
        tokens = sum(fake_token_count(item) for item in items)
        return orjson.dumps(
            {
                "object": "list",
                "data": _reshape(data, fault),
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _nugen_body(self, payload: Any, fault: Fault | None) -> bytes:
        model, native, requested = self._parse_common(payload)
        items = _parse_nugen_input(payload["input"])
        self._check_count(items)
        # Nugen has no base64 encoding: encoding_format is ignored like any unknown field.
        embeddings = _embeddings(model, items, native, requested, False, fault)
        data: list[dict[str, Any]] = [
            {"object": "embedding", "embedding": emb, "index": i}
            for i, emb in enumerate(embeddings)
        ]
        return orjson.dumps(
            {
                "id": f"embed-{uuid.uuid4().hex}",
                "object": "embedding",
                "data": _reshape(data, fault),
                "model": model,
                "created": float(int(time.time())),
                "usage": {"total_tokens": sum(fake_token_count(item) for item in items)},
            }
        )

    def _error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        if self.protocol == "nugen":
            return orjson.dumps({"detail": message})
        err_type = _OPENAI_ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        return orjson.dumps(
            {"error": {"message": message, "type": err_type, "param": param, "code": None}}
        )

    def _error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            body=self._error_body(status, message),
            status=status,
            content_type="application/json",
            headers=dict(headers) if headers else None,
        )


def _lower_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _parse_openai_input(value: Any) -> list[Item]:
    if isinstance(value, str):
        if not value:
            raise _BadRequest("input must not be empty", param="input")
        return [value]
    if not isinstance(value, list) or not value:
        raise _BadRequest("input must be a non-empty string or array", param="input")
    if all(_is_int(v) for v in value):
        return [tuple(value)]
    items: list[Item] = []
    for v in value:
        if isinstance(v, str) and v:
            items.append(v)
        elif isinstance(v, list) and v and all(_is_int(t) for t in v):
            items.append(tuple(v))
        else:
            raise _BadRequest(
                "input items must be non-empty strings or non-empty arrays of token ids",
                param="input",
            )
    if len({type(i) for i in items}) > 1:
        raise _BadRequest("input must not mix strings and token arrays", param="input")
    return items


def _parse_nugen_input(value: Any) -> list[Item]:
    if isinstance(value, str):
        items: list[Item] = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise _BadRequest("input must be a string or list of strings")
    if not items or not all(items):
        raise _BadRequest("input must not be empty")
    return items


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _embeddings(
    model: str,
    items: list[Item],
    native: int,
    requested: int | None,
    b64: bool,
    fault: Fault | None,
) -> list[orjson.Fragment]:
    kind = fault.kind if fault is not None else None
    if kind == "wrong_dims":
        out: list[orjson.Fragment] = []
        for key in items:
            short = _cached_vector(model, key, native, requested)[:-1]
            out.append(orjson.Fragment(_base64_json(short) if b64 else _float_json(short)))
        return out
    out = [_cached_fragment(model, key, native, requested, b64) for key in items]
    if kind == "nan":
        out[0] = _nan_fragment(_cached_vector(model, items[0], native, requested), b64)
    return out


def _reshape(data: list[dict[str, Any]], fault: Fault | None) -> list[dict[str, Any]]:
    if fault is None or fault.kind not in _BODY_FAULTS:
        return data
    if fault.kind == "fewer_vectors":
        return data[:-1]
    if fault.kind == "shuffled":
        return data[::-1]
    return data


async def _send_truncated(request: web.Request, status: int, body: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        # close() (unlike abort()) flushes the half body before the FIN.
        request.transport.close()
    return resp


# ---------------------------------------------------------------------------------------------
# Standalone entry point
# ---------------------------------------------------------------------------------------------


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

    try:
        import uvloop  # noqa: F401

        use_uvloop = not args.no_uvloop
    except ImportError:
        use_uvloop = False

    server = FakeUpstream(
        args.protocol,
        api_key=args.key,
        dims=_parse_model_dims(args.model_dims),
        default_dims=args.dims,
        host=args.host,
        port=args.port,
        max_inputs=args.max_inputs,
        record=args.record,
        use_uvloop=use_uvloop,
    )
    server.latency = args.latency

    serve_until_signalled(server)
    return 0


def serve_until_signalled(server: FakeUpstream) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
