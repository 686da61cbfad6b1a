"""Usage reports are right or say they are not: a 366-day report over every key, with 300,000
unrelated keys in Redis and usage written before the day index existed, answers in full within
its timeout; one that cannot answers 503 in the error shape (the API, the admin API and the
console's CSV alike), never an empty 200."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from app.state.usage_ledger import today
from tests.conftest import CLIENT_KEY, INTERNAL_TOKEN
from tests.console_support import signed_in
from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN, ADMIN_TOKEN, admin, embed, wait_until
from tests.redis_server import RedisServer

MODEL = "text-embedding-3-small"
UNRELATED = 300_000
# One script call writes 100,000 keys: the whole fill takes well under a second.
FILL = """
for i = 1, tonumber(ARGV[2]) do
  redis.call('SET', ARGV[1] .. i, 'x')
end
"""


@pytest.fixture(scope="module")
def crowded_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        with server.client() as client:
            for part in range(UNRELATED // 100_000):  # as the embedding cache would fill it
                client.eval(FILL, 0, f"egw:emb:v1:unrelated:{part}:", 100_000)
            assert client.dbsize() >= UNRELATED
        yield server


def _settings(registry_path, redis: RedisServer, prefix: str, **extra: object) -> dict[str, object]:
    return {
        "MODELS_CONFIG": str(registry_path),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "REDIS_URL": redis.url,
        "USAGE_KEY_PREFIX": prefix,
        "KEYS_KEY_PREFIX": f"keys:{uuid.uuid4().hex[:8]}:",
        "CACHE_ENABLED": False,
        "RATE_LIMIT_PER_SECOND": 0,
        "AUTH_FAILURES_PER_MINUTE": 0,
        **extra,
    }


def test_a_366_day_report_among_300k_unrelated_keys_is_whole(registry_path, crowded_redis):
    prefix = f"usage:{uuid.uuid4().hex[:8]}:"
    first = today() - timedelta(days=365)
    old_day = (today() - timedelta(days=200)).isoformat()
    with crowded_redis.client() as client:  # usage written before the day index existed
        client.hset(f"{prefix}{old_day}:key_from_before", f"{MODEL}\trequests", 7)
        client.hset(f"{prefix}{old_day}:key_from_before", f"{MODEL}\tcost_usd", "0.5")
    with ThreadedGateway(**_settings(registry_path, crowded_redis, prefix)) as gateway:
        for _ in range(3):
            assert embed(gateway.url, CLIENT_KEY, MODEL).status_code == 200
        params = {"start": first.isoformat(), "end": today().isoformat()}

        def whole() -> bool:  # the index of what came before is built in the background
            answer = admin(gateway.url, "GET", "/usage", params=params)
            assert answer.status_code in (200, 503), answer.text
            rows = {r["key"]: r["requests"] for r in answer.json().get("data", [])}
            return rows.get("key_from_before") == 7 and sum(rows.values()) == 10

        wait_until(whole, timeout=20, step=0.2)
        timings = []
        for _ in range(3):
            began = time.monotonic()
            answer = admin(gateway.url, "GET", "/usage", params=params)
            timings.append(time.monotonic() - began)
            assert answer.status_code == 200
        every_key = httpx.get(
            f"{gateway.url}/v1/usage",
            params=params,
            headers={"authorization": f"Bearer {INTERNAL_TOKEN}"},
        ).json()
        console = signed_in(gateway.url)
        csv = console.get("/ui/usage.csv", params=params)
        console.close()
    print(f"\n366-day report over every key, {UNRELATED} unrelated keys: {min(timings):.3f} s")
    assert every_key["total"]["requests"] == 10
    assert {r["date"] for r in every_key["data"]} == {old_day, today().isoformat()}
    assert csv.status_code == 200 and "key_from_before" in csv.text
    assert len(csv.text.strip().splitlines()) == 3  # the header and two days


def test_a_report_that_cannot_be_read_in_time_is_a_503_never_an_empty_200(
    registry_path, crowded_redis
):
    prefix = f"usage:{uuid.uuid4().hex[:8]}:"
    settings = _settings(
        registry_path, crowded_redis, prefix, USAGE_REPORT_TIMEOUT_SECONDS=0.000001
    )
    with ThreadedGateway(**settings) as gateway:
        assert embed(gateway.url, CLIENT_KEY, MODEL).status_code == 200
        answer = admin(gateway.url, "GET", "/usage")
        own = httpx.get(
            f"{gateway.url}/v1/usage", headers={"authorization": f"Bearer {CLIENT_KEY}"}
        )
        console = signed_in(gateway.url)
        csv = console.get("/ui/usage.csv")
        page = console.get("/ui/usage")
        console.close()
    for response in (answer, own):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "usage_unavailable")
    assert csv.status_code == 503 and "date," not in csv.text
    assert page.status_code == 503
    assert ADMIN["authorization"] not in answer.text
