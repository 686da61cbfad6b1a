"""Real clients other than the bare SDK, with their defaults, against the gateway."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx2  # the transport the openai SDK itself is built on
import numpy as np
import openai
import orjson
import pytest
import tiktoken_ext

from tests.conftest import CLIENT_KEY

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture
def offline_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain asks tiktoken for cl100k_base by URL; serve it from tiktoken's own cache."""
    bundled = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    shutil.copy(bundled, tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def test_langchain_defaults_send_token_ids_and_get_the_plain_string_vectors(
    gateway, nugen, offline_tiktoken
):
    from langchain_openai import OpenAIEmbeddings

    texts = ["The quick brown fox jumps over the lazy dog", "Embeddings through a gateway"]
    sent: list[object] = []
    watcher = httpx2.Client(
        event_hooks={"request": [lambda request: sent.append(orjson.loads(request.content))]}
    )
    embedder = OpenAIEmbeddings(
        model="nugen-flash-embed",
        base_url=f"{gateway.url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=watcher,
    )
    via_langchain = np.array(embedder.embed_documents(texts))
    query = np.array(embedder.embed_query(texts[0]))

    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    plain = np.array(
        [d.embedding for d in sdk.embeddings.create(model="nugen-flash-embed", input=texts).data]
    )
    np.testing.assert_allclose(via_langchain, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(query, plain[0], rtol=0, atol=1e-6)
    # LangChain really sent token IDs, and Nugen really got the decoded strings.
    assert sent and all(isinstance(body["input"][0], list) for body in sent)
    assert all(isinstance(r.json["input"][0], str) for r in nugen.embedding_requests())
    received = [text for r in nugen.embedding_requests() for text in r.json["input"]]
    assert received.count(texts[0]) == 3 and received.count(texts[1]) == 2
