"""The registry file: interpolation, validation messages, and the shipped contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config.registry import RegistryError
from app.config.settings import Settings
from app.runtime.build import read_registry
from tests.harness import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


GOOD = """
providers:
  up:
    type: nanogpt
    base_url: ${UP_URL:-http://127.0.0.1:1/v1}
    api_key: ${UP_KEY}
    max_attempts: 3
models:
  m:
    name: M
    owned_by: me
    dimensions: 8
    max_tokens: 100
    pricing: {per_million_tokens: 0.5}
    routes:
      - {provider: up, model: upstream-m, max_attempts: 1, accepts_token_ids: true}
"""


def test_interpolation_defaults_and_route_overrides(tmp_path):
    registry = read_registry(write(tmp_path, GOOD), {"UP_KEY": "k-123"})
    provider = registry.providers["up"]
    assert provider.base_url == "http://127.0.0.1:1/v1"
    assert provider.api_key is not None and provider.api_key.get_secret_value() == "k-123"
    assert provider.api_key_env == "UP_KEY"
    assert "k-123" not in repr(provider)
    route = registry.models["m"].routes[0]
    assert route.upstream_model == "upstream-m"
    assert route.policy.max_attempts == 1
    assert route.accepts_token_ids is True
    assert registry.models["m"].config.pricing.currency == "USD"


def test_env_default_applies_to_an_empty_variable(tmp_path):
    registry = read_registry(write(tmp_path, GOOD), {"UP_KEY": "k", "UP_URL": ""})
    assert registry.providers["up"].base_url == "http://127.0.0.1:1/v1"


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (GOOD, {}, "providers.up.api_key: environment variable UP_KEY is not set"),
        (
            GOOD.replace("dimensions: 8", "dimensions: 0"),
            {"UP_KEY": "k"},
            "models.m.dimensions: Input should be greater than or equal to 1",
        ),
        (
            GOOD.replace("provider: up,", "provider: down,"),
            {"UP_KEY": "k"},
            "models.m.routes.0.provider: unknown provider 'down'",
        ),
        (
            GOOD.replace("type: nanogpt", "type: grpc"),
            {"UP_KEY": "k"},
            "providers.up.type: Input tag 'grpc' found using 'type' does not match any of the "
            "expected tags: 'nanogpt', 'aiml', 'nugen', 'openai',",
        ),
        (
            GOOD.replace("max_tokens: 100", "max_tokens: 100\n    colour: red"),
            {"UP_KEY": "k"},
            "models.m.colour: Extra inputs are not permitted",
        ),
        ("providers: [\n", {}, "cannot be read as YAML"),
    ],
)
def test_a_bad_file_gives_one_message_naming_file_entry_and_field(
    tmp_path, text, environ, expected
):
    path = write(tmp_path, text)
    with pytest.raises(RegistryError) as caught:
        read_registry(path, environ)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="file not found"):
        read_registry(tmp_path / "nope.yaml", {})


def test_nugen_routes_cannot_take_token_ids(tmp_path):
    from app.providers import build_providers

    text = GOOD.replace("type: nanogpt", "type: nugen")
    with pytest.raises(RegistryError, match="accepts_token_ids: Nugen takes strings only"):
        build_providers(read_registry(write(tmp_path, text), {"UP_KEY": "k"}))


def test_the_shipped_registry():
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    registry = read_registry(ROOT / "config" / "models.yaml", settings.interpolation_env({}))
    models = registry.models
    nanogpt_models = [m for m in models.values() if m.routes[0].provider == "nanogpt"]
    assert len(nanogpt_models) == 16
    assert models["BAAI/bge-large-en-v1.5"].config.dimensions == 1024
    for model_id in ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"):
        assert [r.provider for r in models[model_id].routes] == ["nanogpt", "aiml"]
    assert models["text-embedding-3-small"].config.supports_dimensions
    assert not models["text-embedding-ada-002"].config.supports_dimensions
    assert models["Qwen/Qwen3-Embedding-0.6B"].config.supports_dimensions
    for model_id in (
        "voyage-2",
        "togethercomputer/m2-bert-80M-32k-retrieval",
        "textembedding-gecko@003",
        "BAAI/bge-base-en-v1.5",
    ):
        assert [r.provider for r in models[model_id].routes] == ["aiml"]
    nugen = models["nugen-flash-embed"]
    assert nugen.config.supports_dimensions and nugen.routes[0].provider == "nugen"
    assert registry.providers["nanogpt"].base_url == "https://nano-gpt.com/api/v1"
    assert registry.providers["aiml"].base_url == "https://api.aimlapi.com/v1"
    assert registry.providers["nugen"].base_url == "https://api.nugen.in/api/v3"
