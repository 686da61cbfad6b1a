"""Fake upstream embedding providers: real HTTP servers on 127.0.0.1 for tests and benchmarks.

Each wire protocol is one module with a :class:`WireProtocol` subclass, listed in protocols.py:

* ``"openai"`` (openai.py) -- ``POST /v1/embeddings`` (also ``/api/v1/embeddings``), the shape
  used by OpenAI, NanoGPT and AI/ML API, including ``encoding_format: "base64"``.
* ``"nugen"`` (nugen.py) -- ``POST /api/v3/inference/embeddings`` (also
  ``/inference/embeddings``): string inputs only, float vectors only, ``{"detail": ...}`` errors.
* ``"azure"`` (azure.py) -- ``POST /openai/deployments/{deployment}/embeddings?api-version=``,
  OpenAI's bodies, the key in ``api-key``.
* ``"cohere"`` (cohere.py) -- ``POST /v2/embed``: ``texts``, a required ``input_type``,
  ``embeddings.float`` and ``meta.billed_units`` back, ``{"message": ...}`` errors.
* ``"voyage"`` (voyage.py) -- ``POST /v1/embeddings``: ``input_type``, ``output_dimension``,
  ``truncation``, ``usage.total_tokens``, ``{"detail": ...}`` errors.
* ``"gemini"`` (gemini.py) -- ``POST /v1beta/models/{model}:batchEmbedContents``, the key in
  ``x-goog-api-key``, ``embeddings[].values`` back with no usage, Google's error bodies.

A protocol whose URL or auth differs from OpenAI's overrides ``matches``, ``authorized``,
``unauthorized`` or ``parse_request`` (wire.py).

The rest is shared: vectors.py (deterministic vectors, see :func:`fake_vector`, so tests can
compute exactly what the gateway should return), faults.py (error statuses, hangs, dropped
connections, truncated or malformed bodies, per request or at a deterministic rate),
recording.py (every request kept), server.py (the thread-and-loop aiohttp server), upstream.py
(:class:`FakeUpstream`, which puts them together) and cli.py (the standalone process).

The server runs on its own event loop in a daemon thread, so sync and async tests can share it::

    with FakeUpstream("openai", api_key="k", dims={"big": 1536}) as up:
        up.add_fault(Fault.http_status(429, {"Retry-After": "1"}))
        ...  # point the gateway at up.base_url

Standalone (for benchmarks)::

    python -m tests.fakes --protocol openai --port 9001 --dims 1536 --key KEY
"""

from tests.fakes.cli import serve_until_signalled, uvloop_available
from tests.fakes.faults import FAULT_KINDS, Fault
from tests.fakes.protocols import PROTOCOLS, WIRE_PROTOCOLS
from tests.fakes.recording import RecordedRequest
from tests.fakes.server import ThreadedServer
from tests.fakes.upstream import FakeUpstream
from tests.fakes.vectors import Item, fake_token_count, fake_vector
from tests.fakes.wire import BadRequest, EmbeddingCall, WireProtocol

__all__ = [
    "FAULT_KINDS",
    "PROTOCOLS",
    "WIRE_PROTOCOLS",
    "BadRequest",
    "EmbeddingCall",
    "FakeUpstream",
    "Fault",
    "Item",
    "RecordedRequest",
    "ThreadedServer",
    "WireProtocol",
    "fake_token_count",
    "fake_vector",
    "serve_until_signalled",
    "uvloop_available",
]
