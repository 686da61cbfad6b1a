"""A Redis failover under bounded load: a Sentinel `SENTINEL FAILOVER`, and a Cluster master
killed outright. No request may fail; limits are counted in process while Redis is away, and
the gateway goes back to the new master by itself. Each run prints its figures."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import providers_for, standard_models
from tests.harness import ThreadedGateway, write_registry
from tests.redis_cluster import RedisClusterServers
from tests.redis_sentinel import MASTER_NAME, RedisSentinelServers

MODEL = "text-embedding-3-small"
CLIENTS = 6
MAX_REQUESTS = 20_000  # bounds: in count and in time
MAX_SECONDS = 40.0
BUCKET = "127.0.0.1"


class Load:
    """`CLIENTS` threads sending unique single-input requests until stopped or bounded."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._sent = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(CLIENTS)
        self._began = time.monotonic()

    def __enter__(self) -> Load:
        for _ in range(CLIENTS):
            self._pool.submit(self._client)
        return self

    def _client(self) -> None:
        with httpx.Client(base_url=self._url, timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self._sent >= MAX_REQUESTS or time.monotonic() - self._began > MAX_SECONDS:
                        return
                    self._sent += 1
                try:
                    response = client.post(
                        "/v1/embeddings",
                        json={
                            "model": MODEL,
                            "input": uuid.uuid4().hex,
                            "encoding_format": "float",
                        },
                    )
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all counts as an error too
                with self._lock:
                    self.statuses[status] += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)


def watch_outage(limiter, stop: threading.Event, spans: list[float]) -> None:
    """Seconds during which limits were counted in process, sampled every 5 ms."""
    down_since = None
    while not stop.is_set():
        if not limiter.using_redis and down_since is None:
            down_since = time.monotonic()
        elif limiter.using_redis and down_since is not None:
            spans.append(time.monotonic() - down_since)
            down_since = None
        time.sleep(0.005)
    if down_since is not None:
        spans.append(time.monotonic() - down_since)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, nanogpt, aiml, nugen):
    path = tmp_path_factory.mktemp("failover") / "models.yaml"
    return write_registry(path, providers_for(nanogpt, aiml, nugen), standard_models())


@pytest.mark.parametrize("mode", ["sentinel", "cluster"])
def test_failover_under_load_fails_no_request_and_recovers(registry, mode):
    servers = RedisSentinelServers() if mode == "sentinel" else RedisClusterServers()
    prefix = f"fo:{uuid.uuid4().hex[:8]}:"
    with servers:
        if isinstance(servers, RedisSentinelServers):
            redis_env = {
                "REDIS_MODE": "sentinel",
                "REDIS_SENTINELS": servers.addresses,
                "REDIS_SENTINEL_MASTER": MASTER_NAME,
            }
        else:
            redis_env = {"REDIS_MODE": "cluster", "REDIS_URL": servers.url}
        with ThreadedGateway(
            MODELS_CONFIG=str(registry),
            RATE_LIMIT_PER_SECOND=100_000,  # counted, never reached: every answer must be 200
            RATE_LIMIT_KEY_PREFIX=prefix,
            GATEWAY_API_KEYS="",
            **redis_env,
        ) as gateway:
            limiter = gateway.server.lifespan.state["services"].limiter
            assert limiter.using_redis
            stop, spans = threading.Event(), []
            watcher = threading.Thread(target=watch_outage, args=(limiter, stop, spans))
            watcher.start()
            began = time.monotonic()
            with Load(gateway.url) as load:
                time.sleep(1.0)
                failed_over_at = time.monotonic()
                if isinstance(servers, RedisSentinelServers):
                    new_master = servers.failover()
                else:
                    old = servers.master_of(prefix + BUCKET)
                    new_master = servers.replica_of(old)
                    old.kill()
                    servers.wait_promoted(new_master)
                failover_seconds = time.monotonic() - failed_over_at
                # Back on Redis by itself: the limiter answers from the new master again.
                deadline = time.monotonic() + 20
                while not (limiter.using_redis and _counted_on(new_master, prefix + BUCKET)):
                    assert time.monotonic() < deadline, "the gateway did not go back to Redis"
                    time.sleep(0.05)
                recovered_after = time.monotonic() - failed_over_at
                time.sleep(1.0)  # and keeps serving on it
            stop.set()
            watcher.join()
            elapsed = time.monotonic() - began
    served = load.statuses[200]
    errors = sum(n for status, n in load.statuses.items() if status != 200)
    print(
        f"\n{mode} failover: {served} requests served in {elapsed:.1f} s, {errors} errors "
        f"({dict(load.statuses)}); failover took {failover_seconds:.2f} s; back on Redis "
        f"{recovered_after:.2f} s after it began; limits counted in process for "
        f"{sum(spans):.2f} s in {len(spans)} span(s)"
    )
    assert served > 0 and errors == 0
    assert limiter.using_redis


def _counted_on(server, key: str) -> bool:
    with server.client() as client:
        return client.zcard(key) > 0
