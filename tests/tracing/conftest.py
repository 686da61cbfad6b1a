"""What the tracing tests share: an OTLP/HTTP receiver, a fake OpenAI upstream that records the
headers it gets (cleared before each test that uses it) and a registry routing to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeUpstream
from tests.otlp_receiver import OTLPReceiver
from tests.tracing_support import UPSTREAM_KEY, write_tracing_registry


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").clear()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Path:
    return write_tracing_registry(tmp_path_factory.mktemp("tracing") / "models.yaml", upstream)
