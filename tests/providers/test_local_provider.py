"""The `local` provider: all-MiniLM-L6-v2 on onnxruntime, checked against sentence-transformers.

tests/fixtures/minilm_reference.json holds vectors that sentence-transformers computed with the
original fp32 model (scripts/make_minilm_reference.py); our int8 ONNX run must match them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.config.registry import RegistryError
from app.config.settings import Settings
from app.providers import Failure, UpstreamCall, UpstreamError, build_providers
from app.providers.local import (
    LOCAL_MODELS,
    RUN_BATCH,
    SPIN_MICROSECONDS,
    LocalConfig,
    LocalModelUnavailable,
    LocalProvider,
    load_graph,
    sub_batches,
)
from app.runtime.build import read_registry
from tests.harness import ROOT, model_entry, write_registry

MODEL = "all-MiniLM-L6-v2"
DIMS = 384
CLIENT_KEY = "sk-local-test-key-0001"
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "minilm_reference.json").read_text())
WORD_PIECES = {item["text"]: item["word_pieces"] for item in FIXTURE["items"]}
REFERENCE = {
    item["text"]: np.asarray(item["embedding"], dtype=np.float64) for item in FIXTURE["items"]
}
TEXTS = list(REFERENCE)
# The gateway checks max_tokens (256) in cl100k tokens before the model sees an input, so the
# one reference far past that limit is for the provider-level tests only.
API_TEXTS = [text for text in TEXTS if WORD_PIECES[text] < 256]
# Unrelated to anything in the references, varied in length so sub-batches pad differently.
VARIED = [("word " * (1 + (i * 7) % 60)) + f"number {i}" for i in range(RUN_BATCH + 9)]


def call(inputs: list[Any], *, dimensions: int | None = None, timeout: float = 30) -> UpstreamCall:
    return UpstreamCall(
        upstream_model=MODEL,
        inputs=inputs,
        dimensions=dimensions,
        user=None,
        expected_dims=DIMS,
        want_base64=False,
        timeout=timeout,
        request_id="req-local-test",
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    local = LocalProvider("local", LocalConfig(type="local"))
    yield local
    asyncio.run(local.aclose())


# --- the provider itself ---------------------------------------------------------------------


def test_the_fixture_is_what_the_script_makes():
    assert FIXTURE["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert FIXTURE["dimensions"] == DIMS and FIXTURE["max_seq_length"] == 256
    assert 6 <= len(TEXTS) <= 10
    # The reference tokenizer is the very file we ship.
    spec = LOCAL_MODELS[MODEL]
    assert FIXTURE["weights"]["tokenizer.json sha256"] == spec.tokenizer_sha256


async def test_vectors_match_sentence_transformers(provider):
    result = await provider.embed(call(TEXTS))
    assert result.vectors.shape == (len(TEXTS), DIMS)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    for text, vector in zip(TEXTS, result.vectors, strict=True):
        assert cosine(vector, REFERENCE[text]) >= 0.99, text


async def test_similarity_ranks_like_the_model(provider):
    guitar, instrument, market, cat, password = (
        "A man is playing guitar.",
        "Someone plays an instrument.",
        "The stock market fell today.",
        "The cat sits on the mat.",
        "How do I reset my password?",
    )
    texts = [guitar, instrument, market, cat, password, "I forgot my login credentials."]
    vectors = dict(zip(texts, (await provider.embed(call(texts))).vectors, strict=True))

    def sim(a: str, b: str) -> float:
        return cosine(vectors[a], vectors[b])

    assert sim(guitar, instrument) > sim(guitar, market)
    assert sim(guitar, instrument) > sim(guitar, cat)
    assert sim(password, "I forgot my login credentials.") > sim(password, market)
    assert sim(password, "I forgot my login credentials.") > sim(password, instrument)


async def test_usage_is_the_models_word_pieces_special_tokens_included(provider):
    result = await provider.embed(call(["hello world"]))
    assert result.prompt_tokens == 4  # [CLS] hello world [SEP]
    result = await provider.embed(call(TEXTS))
    # The fixture's counts come from sentence-transformers' tokenizer, truncation included.
    assert result.prompt_tokens == sum(WORD_PIECES[text] for text in TEXTS)
    # Each input's own count too, so a merged call's usage splits exactly
    # (app/core/routing/batching.py).
    assert result.input_tokens is not None
    assert result.input_tokens.tolist() == [WORD_PIECES[text] for text in TEXTS]


async def test_a_very_long_input_is_truncated_at_256_word_pieces(provider):
    sentence = "Supply chains, interest rates and the weather were discussed at length. "
    prefix = sentence * 40  # already far past 256 word pieces
    huge = sentence * 4000  # ~60k word pieces before truncation
    result = await provider.embed(call([huge, prefix]))
    assert result.prompt_tokens == 2 * 256
    # Both keep the same first 254 word pieces, so both give the same vector.
    np.testing.assert_allclose(result.vectors[0], result.vectors[1], atol=1e-6)


async def test_a_configured_max_seq_length_truncates_sooner():
    short = LocalProvider("local", LocalConfig(type="local", max_seq_length=8))
    try:
        result = await short.embed(call(["one two three four five six seven eight nine ten"]))
    finally:
        await short.aclose()
    assert result.prompt_tokens == 8


async def test_several_sub_batches_give_the_vectors_of_one_at_a_time(provider):
    assert len(VARIED) > RUN_BATCH  # one call, more than one onnxruntime run
    together = await provider.embed(call(VARIED))
    alone = [(await provider.embed(call([text]))).vectors[0] for text in VARIED]
    np.testing.assert_allclose(together.vectors, np.stack(alone), atol=2e-6)
    assert together.prompt_tokens == sum(len(text.split()) + 2 for text in VARIED)


def test_sub_batches_cap_size_and_keep_lengths_alike():
    lengths = np.array([3, 256, 4, 10, 9, 5, 2] + [7] * (RUN_BATCH + 3))
    groups = sub_batches(lengths)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    assert groups[0].tolist() == [1]  # the long one runs alone
    for group in groups:
        assert len(group) <= RUN_BATCH
        assert lengths[group].min() * 2 >= lengths[group].max()
    assert sub_batches(np.array([], dtype=np.int64)) == []


async def test_no_inputs_no_vectors(provider):
    result = await provider.embed(call([]))
    assert result.vectors.shape == (0, DIMS) and result.prompt_tokens == 0


async def test_dimensions_and_token_ids_are_refused(provider):
    with pytest.raises(UpstreamError) as caught:
        await provider.embed(call(["x"], dimensions=128))
    assert caught.value.failure is Failure.BAD_REQUEST
    with pytest.raises(UpstreamError) as caught:
        await provider.embed(call([[15339, 1917]]))
    assert caught.value.failure is Failure.BAD_REQUEST
    assert LocalProvider.supports_token_ids is False


async def test_a_call_past_its_timeout_fails_as_a_timeout_and_stops_its_run(monkeypatch, provider):
    started, stopped = threading.Event(), threading.Event()

    def stuck(spec, texts, stop):
        started.set()
        if stop.wait(10):  # the provider sets `stop` when the awaiting call gives up
            stopped.set()
        return np.zeros((len(texts), DIMS), dtype=np.float32), 0

    monkeypatch.setattr(provider, "_embed", stuck)
    with pytest.raises(UpstreamError) as caught:
        await provider.embed(call(["slow"], timeout=0.05))
    assert caught.value.failure is Failure.TIMEOUT
    assert started.is_set()
    assert await asyncio.to_thread(stopped.wait, 10)


async def test_a_closed_provider_refuses_calls():
    local = LocalProvider("local", LocalConfig(type="local"))
    await local.aclose()
    with pytest.raises(UpstreamError) as caught:
        await local.embed(call(["x"]))
    assert caught.value.failure is Failure.CONNECT


async def test_altered_weights_are_refused_not_run(monkeypatch, provider):
    tampered = dataclasses.replace(LOCAL_MODELS[MODEL], name="tampered", graph_sha256="0" * 64)
    with pytest.raises(LocalModelUnavailable, match="has sha256"):
        load_graph(tampered, threads=1)
    monkeypatch.setitem(LOCAL_MODELS, "tampered", tampered)
    with pytest.raises(UpstreamError) as caught:
        await provider.embed(dataclasses.replace(call(["x"]), upstream_model="tampered"))
    assert caught.value.failure is Failure.SERVER
    assert "unavailable" in caught.value.detail


async def test_warm_up_loads_the_session_once_per_process(provider):
    await provider.warm_up()
    other = LocalProvider("other", LocalConfig(type="local"))
    try:
        await other.warm_up()
    finally:
        await other.aclose()
    spec = LOCAL_MODELS[MODEL]
    assert load_graph(spec, 1) is load_graph(spec, 1)


def test_the_session_runs_on_its_threads_and_its_pool_spins_only_briefly():
    options = load_graph(LOCAL_MODELS[MODEL], 2).session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    spin = options.get_session_config_entry("session.intra_op.spin_duration_us")
    assert spin == str(SPIN_MICROSECONDS) and 0 < SPIN_MICROSECONDS <= 1000


# --- the registry ----------------------------------------------------------------------------


def registry_file(tmp_path: Path, provider: dict[str, Any], **model: Any) -> Path:
    entry = model_entry([{"provider": "local", "model": MODEL}], dimensions=DIMS, price=0)
    entry.update(model)
    return write_registry(tmp_path / "models.yaml", {"local": provider}, {MODEL: entry})


def registry_error(path: Path) -> str:
    with pytest.raises(RegistryError) as caught:
        build_providers(read_registry(path, {}))
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def test_a_local_provider_needs_no_url_and_no_key(tmp_path):
    path = registry_file(tmp_path, {"type": "local", "workers": 3, "max_seq_length": 128})
    registry = read_registry(path, {})
    config = registry.providers["local"]
    assert not hasattr(config, "base_url") and not hasattr(config, "api_key")
    assert (config.threads, config.workers, config.max_seq_length) == (2, 3, 128)
    assert config.max_inflight_calls == 3  # one call in flight per worker, unless set
    # A CPU model's pace, not an API's: a second per 1,000 tokens on top of the base timeout.
    assert registry.models[MODEL].routes[0].policy.timeout_per_1k_tokens_seconds == 1.0
    providers = build_providers(registry)
    assert isinstance(providers["local"], LocalProvider)
    asyncio.run(providers["local"].aclose())


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        (
            {"type": "azure_openai"},
            {},
            "providers.local.base_url: Field required",
        ),
        (
            {"type": "aiml", "base_url": "http://127.0.0.1:1", "threads": 2},
            {},
            "providers.local.threads: Extra inputs are not permitted",
        ),
        (
            {"type": "local", "base_url": "http://127.0.0.1:1"},
            {},
            "providers.local.base_url: Extra inputs are not permitted",
        ),
        ({"type": "local", "workers": 0}, {}, "providers.local.workers: Input should be greater"),
        (
            {"type": "local", "max_seq_length": 512},
            {},
            "providers.local.max_seq_length: all-MiniLM-L6-v2 takes at most 256 tokens",
        ),
        (
            {"type": "local"},
            {"dimensions": 768},
            f"models.{MODEL}.dimensions: all-MiniLM-L6-v2 gives 384-dimensional vectors, not 768",
        ),
        (
            {"type": "local"},
            {"supports_dimensions": True},
            f"models.{MODEL}.supports_dimensions: all-MiniLM-L6-v2 cannot shorten its vectors",
        ),
        (
            {"type": "local"},
            {"routes": [{"provider": "local", "model": "all-MiniLM-L12-v2"}]},
            f"models.{MODEL}.routes.0.model: unknown local model 'all-MiniLM-L12-v2': not a "
            "built-in model (known: all-MiniLM-L6-v2) nor a directory",
        ),
        (
            {"type": "local"},
            {"routes": [{"provider": "local", "model": MODEL, "accepts_token_ids": True}]},
            f"models.{MODEL}.routes.0.accepts_token_ids: Local model takes strings only",
        ),
    ],
)
def test_a_bad_local_registry_names_file_entry_and_field(tmp_path, provider, model, expected):
    assert expected in registry_error(registry_file(tmp_path, provider, **model))


def test_the_shipped_registry_serves_minilm_locally():
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    registry = read_registry(ROOT / "config" / "models.yaml", settings.interpolation_env({}))
    model = registry.models[MODEL]
    assert model.config.dimensions == DIMS and not model.config.supports_dimensions
    assert model.config.owned_by == "sentence-transformers"
    assert model.config.pricing.per_million_tokens == 0
    assert [(r.provider, r.upstream_model) for r in model.routes] == [("local", MODEL)]
    assert model.routes[0].policy.max_batch_size == 64
    assert registry.providers["local"].type == "local"
    providers = build_providers(registry)
    assert isinstance(providers["local"], LocalProvider)
    for built in providers.values():
        asyncio.run(built.aclose())
