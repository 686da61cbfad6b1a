"""Every example registry in config/examples/ passes `embeddings-gateway check-config`, with
its provider keys set, and together they cover every HTTP provider type."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.providers.catalog import PROVIDER_TYPES
from tests.harness import ROOT
from tests.server.test_operations import check_config

EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))


def test_the_examples_are_the_documented_six():
    names = {path.name for path in EXAMPLES}
    assert names == {
        "openai.yaml",
        "azure.yaml",
        "cohere.yaml",
        "voyage.yaml",
        "gemini.yaml",
        "self-hosted.yaml",
    }


def test_the_examples_cover_every_new_provider_type():
    types = {
        provider["type"]
        for path in EXAMPLES
        for provider in yaml.safe_load(path.read_text())["providers"].values()
    }
    assert {"openai", "azure_openai", "cohere", "voyage", "gemini"} <= types <= set(PROVIDER_TYPES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_an_example_registry_passes_check_config(path: Path):
    registry = yaml.safe_load(path.read_text())
    secret = f"example-secret-for-{path.stem}"
    env = {
        "PATH": "/usr/bin:/bin",
        "MODELS_CONFIG": str(path),
        # Each provider type's conventional key variable, as the examples read them.
        **{name: secret for name in _key_envs(registry)},
    }
    result = check_config(env, ROOT)
    assert result.returncode == 0, result.stderr
    for model_id in registry["models"]:
        assert model_id in result.stdout
    assert "no key: set" not in result.stdout
    assert secret not in result.stdout + result.stderr


def _key_envs(registry: dict) -> set[str]:
    names = set()
    for provider in registry["providers"].values():
        key = provider.get("api_key", "")
        if key.startswith("${"):
            names.add(key[2:].split(":")[0].rstrip("}"))
    return names


def test_a_providers_key_in_dot_env_reaches_the_registry_and_is_never_printed(tmp_path):
    # settings.py names no provider: the .env line reaches `${COHERE_API_KEY}` all the same.
    secret = "cohere-key-from-dot-env"
    example = ROOT / "config" / "examples" / "cohere.yaml"
    (tmp_path / ".env").write_text(f"MODELS_CONFIG={example}\nCOHERE_API_KEY={secret}\n")
    result = check_config({"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cohere:embed-v4.0 [key set]" in result.stdout
    assert '"COHERE_API_KEY": "**********"' in result.stdout
    assert secret not in result.stdout + result.stderr
