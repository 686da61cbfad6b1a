"""A Batch API line's body is checked once, at validation: running it only rebuilds its job
(`checked_embedding_body`), which must be the very job the endpoint's checks make of the same
body, for every form a body takes; and the rules it was checked under (`body_rules`) change
with anything the checks depend on, so a reload that changes them has lines checked again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from app.config.registry import Registry
from app.config.registry_file import load_registry
from app.core.embedding_request import body_rules, checked_embedding_body, parse_embedding_body
from app.providers.catalog import config_types
from tests.harness import model_entry, write_registry

DIMS = 16
BODIES: list[dict[str, Any]] = [
    {"model": "m", "input": "a single string"},
    {"model": "m", "input": ["two", "strings"], "encoding_format": "float"},
    {"model": "m", "input": ["base64 ones"], "encoding_format": "base64"},
    {"model": "m", "input": [1, 2, 3, 4]},
    {"model": "m", "input": [[5, 6], [7, 8, 9]], "encoding_format": "base64"},
    {"model": "m", "input": ["shorter"], "dimensions": 8, "user": "u-1"},
    {"model": "m", "input": ["its own width"], "dimensions": DIMS},
    {"model": "m", "input": "for search", "input_type": "query"},
    {"model": "m", "input": ["é non-ASCII", "ok"], "input_type": "document", "user": ""},
]


def _registry(tmp: Path, **model: Any) -> Registry:
    provider = {"type": "nanogpt", "base_url": "http://127.0.0.1:9/v1", "api_key": "k"}
    route = {"provider": "up", "model": "up-m", "accepts_token_ids": True}
    shape = {"dimensions": DIMS, "supports_dimensions": True, **model}
    models = {"m": model_entry([route], **shape)}
    path = write_registry(tmp / "models.yaml", {"up": provider}, models)
    return load_registry(path, os.environ, config_types())


@pytest.mark.parametrize("body", BODIES, ids=lambda body: repr(body["input"])[:24])
def test_a_checked_body_is_rebuilt_into_the_job_its_check_made(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    registry = _registry(tmp_path)
    checked = asyncio.run(parse_embedding_body(body, registry, "req-1"))
    model = registry.get("m")
    assert model is not None
    rebuilt = checked_embedding_body(body, model, "req-1")
    assert rebuilt.token_counts() == checked.token_counts()  # counted lazily, or by the check
    assert rebuilt == checked


def test_the_rules_change_with_what_the_checks_depend_on(tmp_path: Path) -> None:
    def rules(**model: Any) -> str:
        found = _registry(tmp_path, **model).get("m")
        assert found is not None
        return body_rules(found)

    assert rules() == rules()
    assert rules(max_tokens=100) != rules()
    assert rules(dimensions=8) != rules()
    assert rules(supports_dimensions=False) != rules()
