from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeUpstream
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.redis_cluster import RedisClusterServers
from tests.redis_sentinel import MASTER_NAME as SENTINEL_MASTER
from tests.redis_sentinel import RedisSentinelServers
from tests.redis_server import RedisServer
from tests.redis_server import available as redis_available

CLIENT_KEY = "sk-client-test-key-0001"
OTHER_CLIENT_KEY = "sk-client-test-key-0002"
INTERNAL_TOKEN = "internal-test-token-xyz"
NANOGPT_KEY = "nano-upstream-secret-111"
AIML_KEY = "aiml-upstream-secret-222"
NUGEN_KEY = "nugen-upstream-secret-333"


@pytest.fixture(scope="session")
def nanogpt() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=NANOGPT_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def aiml() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=AIML_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def nugen() -> Iterator[FakeUpstream]:
    with FakeUpstream("nugen", api_key=NUGEN_KEY, dims={"nugen-flash-embed": 32}) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean_fakes(request: pytest.FixtureRequest) -> None:
    """Each test starts with fakes that have no recordings and no faults queued."""
    for name in ("nanogpt", "aiml", "nugen"):
        if name in request.fixturenames:
            request.getfixturevalue(name).clear()


def providers_for(nanogpt: FakeUpstream, aiml: FakeUpstream, nugen: FakeUpstream, **policy):
    return {
        "nanogpt": {
            "type": "nanogpt",
            "base_url": nanogpt.base_url,
            "api_key": NANOGPT_KEY,
            **policy,
        },
        "aiml": {"type": "aiml", "base_url": aiml.base_url, "api_key": AIML_KEY, **policy},
        "nugen": {"type": "nugen", "base_url": nugen.base_url, "api_key": NUGEN_KEY, **policy},
    }


def standard_models() -> dict:
    return {
        "text-embedding-3-small": model_entry(
            [
                {"provider": "nanogpt", "model": "text-embedding-3-small"},
                {"provider": "aiml", "model": "text-embedding-3-small"},
            ],
            dimensions=16,
            supports_dimensions=True,
        ),
        "aiml-only": model_entry([{"provider": "aiml", "model": "upstream-aiml-name"}]),
        "nano-tokens": model_entry(
            [{"provider": "nanogpt", "model": "nano-tokens", "accepts_token_ids": True}]
        ),
        "nugen-flash-embed": model_entry(
            [{"provider": "nugen", "model": "nugen-flash-embed"}],
            dimensions=32,
            supports_dimensions=True,
        ),
        "tiny-context": model_entry([{"provider": "nanogpt", "model": "tiny"}], max_tokens=5),
    }


@pytest.fixture(scope="session")
def registry_path(tmp_path_factory, nanogpt, aiml, nugen) -> Path:
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    return write_registry(path, providers_for(nanogpt, aiml, nugen), standard_models())


@pytest.fixture(scope="session")
def gateway(registry_path: Path) -> Iterator[ThreadedGateway]:
    batches = registry_path.parent / "batches"  # the Batch API's files, not in the work tree
    with ThreadedGateway(
        MODELS_CONFIG=str(registry_path),
        BATCH_DIR=str(batches / "files"),
        BATCH_DB=str(batches / "batches.db"),
        GATEWAY_API_KEYS=f"{CLIENT_KEY},{OTHER_CLIENT_KEY}",
        GATEWAY_INTERNAL_TOKEN=INTERNAL_TOKEN,
        MAX_REQUEST_BODY_BYTES=4_000_000,
        RATE_LIMIT_PER_SECOND=0,  # limits have their own tests; here they would only add flakes
        AUTH_FAILURES_PER_MINUTE=0,
    ) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port, for the whole session."""
    if not redis_available():  # a missing server must fail the suite, never skip it quietly
        raise RuntimeError("redis-server is not installed: `make test` installs it")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster, each master with a replica, for the whole session."""
    with RedisClusterServers() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    """A real master, replica and three sentinels, for the whole session."""
    with RedisSentinelServers() as sentinel:
        yield sentinel


def redis_settings(request: pytest.FixtureRequest, mode: str) -> dict[str, str]:
    """The gateway's Redis settings for `mode`, on the session's servers for it."""
    if mode == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return {"REDIS_MODE": "cluster", "REDIS_URL": cluster.url}
    if mode == "sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        return {
            "REDIS_MODE": "sentinel",
            "REDIS_SENTINELS": sentinel.addresses,
            "REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
        }
    return {"REDIS_URL": request.getfixturevalue("redis_server").url}


# -- markers: what a test needs, so a developer can choose (`-m "not system and not processes"`)

_SOURCES: dict[Path, str] = {}
_BY_NAME = {
    "test_console_browser": "browser",
    "test_node_sdk": "node",
    "test_kubernetes": "kubernetes",
    "test_helm": "kubernetes",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it starts: from its folder, its module's name and its source."""
    tests = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        if tests / "system" in path.parents:
            item.add_marker("system")
        if (extra := _BY_NAME.get(path.stem)) is not None:
            item.add_marker(extra)
        source = _SOURCES.get(path)
        if source is None:
            source = _SOURCES[path] = path.read_text(encoding="utf-8")
        if (
            "redis_server" in item.fixturenames
            or "redis_cluster" in item.fixturenames
            or "RedisServer" in source
            or "redis_server" in source
            or "redis_settings" in source
        ):
            item.add_marker("redis")
        if "GatewayProcess" in source or "check_config" in source:
            item.add_marker("processes")
