"""Start-up checks that come from each provider type's declared capabilities."""

from __future__ import annotations

import pytest

from app.config.registry import RegistryError
from app.providers import build_providers
from app.runtime.build import read_registry
from tests.harness import model_entry, write_registry


def registry_error(tmp_path, provider: dict, route: dict) -> str:
    models = {"m": model_entry([{"provider": "p", "model": "x", **route}])}
    path = write_registry(tmp_path / "models.yaml", {"p": {"api_key": "k", **provider}}, models)
    with pytest.raises(RegistryError) as caught:
        build_providers(read_registry(path, {}))
    return str(caught.value)


@pytest.mark.parametrize(("type_", "limit"), [("cohere", 96), ("gemini", 100)])
def test_a_batch_over_the_apis_limit_is_refused_at_start_up(tmp_path, type_, limit):
    message = registry_error(tmp_path, {"type": type_, "max_batch_size": 500}, {})
    assert "models.m.routes.0.max_batch_size: " in message
    assert f"takes at most {limit} inputs per call" in message
    route_override = registry_error(tmp_path, {"type": type_}, {"max_batch_size": limit + 1})
    assert f"takes at most {limit} inputs per call" in route_override


@pytest.mark.parametrize("type_", ["cohere", "voyage", "gemini"])
def test_text_only_types_refuse_token_id_routes(tmp_path, type_):
    message = registry_error(tmp_path, {"type": type_}, {"accepts_token_ids": True})
    assert "models.m.routes.0.accepts_token_ids: " in message and "takes strings only" in message


def test_the_openai_type_takes_token_ids_only_when_the_registry_says_so(tmp_path):
    message = registry_error(tmp_path, {"type": "openai"}, {"accepts_token_ids": True})
    assert "takes strings only" in message
    models = {"m": model_entry([{"provider": "p", "model": "x", "accepts_token_ids": True}])}
    provider = {"type": "openai", "supports_token_ids": True}
    path = write_registry(tmp_path / "ok.yaml", {"p": provider}, models)
    assert set(build_providers(read_registry(path, {}))) == {"p"}


@pytest.mark.parametrize("type_", ["aiml", "nugen", "cohere", "gemini"])
def test_base64_is_refused_where_the_type_does_not_send_it(tmp_path, type_):
    message = registry_error(tmp_path, {"type": type_, "returns_base64": True}, {})
    assert "models.m.routes.0.returns_base64: " in message
    assert "does not send base64 vectors" in message


@pytest.mark.parametrize("type_", ["nanogpt", "aiml", "nugen", "openai", "azure_openai"])
def test_a_route_input_type_is_refused_where_it_has_no_effect(tmp_path, type_):
    provider = {"type": type_, "base_url": "http://127.0.0.1:1"}
    message = registry_error(tmp_path, provider, {"input_type": "query"})
    assert "models.m.routes.0.input_type: " in message and "has no effect here" in message
