"""LlamaIndex's OpenAIEmbedding, with its defaults, against the gateway and the fake upstreams."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, fake_vector

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
TEXTS = ["LlamaIndex through a gateway", "second document", "ünïcödé and emoji 🚀"]


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail any connection or DNS lookup that leaves 127.0.0.1, and list the attempts.

    LlamaIndex may fetch tiktoken or NLTK data on first use; it ships both in its own
    _static/ caches, and this proves nothing in the import or the calls goes to the network.
    """
    attempts: list[Any] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(address)
            raise OSError(f"test network guard: connection to {address!r} refused")
        return connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and host not in LOOPBACK:
            attempts.append(host)
            raise OSError(f"test network guard: DNS lookup of {host!r} refused")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"LlamaIndex tried to reach the network: {attempts}"


def llamaindex_embedding(gateway, **kwargs: Any):
    # Imported here, under the guard, so import-time downloads would be caught too.
    from llama_index.embeddings.openai import OpenAIEmbedding

    return OpenAIEmbedding(
        api_base=f"{gateway.url}/v1",
        api_key=CLIENT_KEY,
        max_retries=1,  # one attempt: a failure surfaces at once, not after tenacity's backoff
        timeout=20,
        **kwargs,
    )


def assert_vectors(got: list[list[float]], expected: list[np.ndarray]) -> None:
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), np.stack(expected).astype(np.float64), rtol=0, atol=1e-6
    )


@pytest.mark.usefixtures("loopback_only")
def test_openai_model_name_single_and_batch(gateway, nanogpt: FakeUpstream) -> None:
    embedder = llamaindex_embedding(gateway, model="text-embedding-3-small")
    single = embedder.get_text_embedding(TEXTS[0])
    batch = embedder.get_text_embedding_batch(TEXTS)

    # The test registry's text-embedding-3-small is 16-dim; LlamaIndex sends no `dimensions`.
    assert len(single) == 16
    assert_vectors([single], [fake_vector("text-embedding-3-small", TEXTS[0], 16)])
    assert_vectors(batch, [fake_vector("text-embedding-3-small", t, 16) for t in TEXTS])
    sent = [r.json for r in nanogpt.embedding_requests()]
    assert [body["input"] for body in sent] == [[TEXTS[0]], TEXTS]
    assert all("dimensions" not in body for body in sent)


@pytest.mark.usefixtures("loopback_only")
def test_dimensions_are_passed_through(gateway, nanogpt: FakeUpstream) -> None:
    embedder = llamaindex_embedding(gateway, model="text-embedding-3-small", dimensions=8)
    batch = embedder.get_text_embedding_batch(TEXTS[:2])
    assert_vectors(batch, [fake_vector("text-embedding-3-small", t, 16, 8) for t in TEXTS[:2]])
    assert nanogpt.embedding_requests()[-1].json["dimensions"] == 8


@pytest.mark.usefixtures("loopback_only")
def test_a_non_openai_model_name_through_model_name(gateway, nugen: FakeUpstream) -> None:
    # `model` must be one of LlamaIndex's OpenAI enum values (it raises ValueError otherwise);
    # its `model_name` keyword replaces the name actually sent, and takes any string.
    embedder = llamaindex_embedding(
        gateway, model="text-embedding-3-small", model_name="nugen-flash-embed"
    )
    assert_vectors(
        [embedder.get_text_embedding(TEXTS[0])], [fake_vector("nugen-flash-embed", TEXTS[0], 32)]
    )
    assert_vectors(
        embedder.get_text_embedding_batch(TEXTS),
        [fake_vector("nugen-flash-embed", t, 32) for t in TEXTS],
    )
    assert [r.json["model"] for r in nugen.embedding_requests()] == ["nugen-flash-embed"] * 2
