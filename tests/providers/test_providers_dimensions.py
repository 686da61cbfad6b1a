"""Local Matryoshka reduction (`dimensions_mode: truncate`) and keyless OpenAI-compatible
servers, against a fake self-hosted server (TEI-like: no key, no `dimensions`) on a socket."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from app.config.registry import RegistryError
from app.providers import build_providers
from app.runtime.build import read_registry
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry

NATIVE = 32


def self_hosted(fake: FakeUpstream) -> dict:
    # No api_key at all: self-hosted servers often have none.
    return {"type": "openai", "base_url": fake.base_url, "supports_dimensions": False}


@pytest.fixture(scope="module")
def tei() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=None, default_dims=NATIVE) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, tei) -> Iterator[ThreadedGateway]:
    route = {"provider": "tei", "model": "nomic-embed-text", "dimensions_mode": "truncate"}
    models = {"nomic": model_entry([route], dimensions=NATIVE, supports_dimensions=True)}
    path = write_registry(
        tmp_path_factory.mktemp("tei") / "models.yaml", {"tei": self_hosted(tei)}, models
    )
    with ThreadedGateway(MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY) as server:
        yield server


@pytest.fixture
def client(gateway, tei) -> openai.OpenAI:
    tei.clear()
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)


def hand_truncated(text: str, dimensions: int) -> np.ndarray:
    full = fake_vector("nomic-embed-text", text, NATIVE)  # float32, as the server sends it
    head = full[:dimensions].astype(np.float64)
    return head / np.linalg.norm(head)


def as_array(embedding: list[float] | str) -> np.ndarray:
    # An explicit encoding_format="base64" makes the SDK hand back the string as it came.
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float64)
    return np.asarray(embedding, dtype=np.float64)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_truncate_shortens_the_full_vector_and_renormalises_it(client, tei, encoding):
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    response = client.embeddings.create(
        model="nomic", input=texts, dimensions=8, encoding_format=encoding
    )
    assert "dimensions" not in tei.embedding_requests()[-1].json  # the server was not asked
    for item, text in zip(response.data, texts, strict=True):
        vector = as_array(item.embedding)
        assert vector.shape == (8,)
        np.testing.assert_allclose(vector, hand_truncated(text, 8), rtol=0, atol=1e-6)
        assert abs(np.linalg.norm(vector) - 1) < 1e-6
        # Not merely the first 8 values: the cut vector was rescaled.
        assert not np.allclose(vector, fake_vector("nomic-embed-text", text, NATIVE)[:8])


def test_without_dimensions_the_full_vector_passes_through(client, tei):
    response = client.embeddings.create(model="nomic", input="x", encoding_format="float")
    np.testing.assert_array_equal(
        np.asarray(response.data[0].embedding, dtype=np.float32),
        fake_vector("nomic-embed-text", "x", NATIVE),
    )
    request = tei.embedding_requests()[-1]
    assert "authorization" not in request.headers  # no key configured, none sent


def test_a_keyless_self_hosted_provider_is_offered(client):
    assert "nomic" in {model.id for model in client.models.list()}


def test_a_route_that_cannot_take_dimensions_must_say_truncate(tmp_path, tei):
    route = {"provider": "tei", "model": "nomic-embed-text"}  # dimensions_mode: pass
    models = {"nomic": model_entry([route], dimensions=NATIVE, supports_dimensions=True)}
    path = write_registry(tmp_path / "models.yaml", {"tei": self_hosted(tei)}, models)
    with pytest.raises(RegistryError) as caught:
        build_providers(read_registry(path, {}))
    assert "models.nomic.routes.0.dimensions_mode: OpenAI-compatible upstream cannot shorten" in (
        str(caught.value)
    )


def test_openai_itself_can_require_its_key(tmp_path):
    provider = {"type": "openai", "api_key": "${UNSET_OPENAI_KEY_FOR_TEST:-}"}
    models = {"m": model_entry([{"provider": "openai", "model": "text-embedding-3-small"}])}
    optional = read_registry(write_registry(tmp_path / "a.yaml", {"openai": provider}, models), {})
    assert optional.models["m"].available  # a self-hosted server may need no key
    required = {**provider, "requires_api_key": True}
    path = write_registry(tmp_path / "b.yaml", {"openai": required}, models)
    registry = read_registry(path, {})
    assert not registry.models["m"].available
    assert registry.models["m"].missing_keys == ["UNSET_OPENAI_KEY_FOR_TEST"]
    assert registry.providers["openai"].base_url == "https://api.openai.com/v1"
