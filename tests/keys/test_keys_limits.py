"""Per-key limits and budgets: the weighted token log in process (injected clock), and a key's
whole policy in one script call on a real Redis and a real Cluster."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster

from app.config.registry import Registry
from app.config.settings import Settings
from app.core.tokens import count_tokens
from app.errors import KeyStoreUnavailable
from app.keys.budget_lua import held_member
from app.keys.build import build_key_checks, build_keys
from app.keys.checks import KEY_POLICY, BudgetAsk, KeyChecks, KeyVerdict
from app.keys.limits import LocalTokenLimiter
from app.keys.model import ApiKeyRecord, KeyPolicy
from app.keys.redis_store import hold_key
from app.keys.service import ManagedKeys
from app.keys.sqlite_store import SQLiteKeyStore
from app.keys.store import SpendEntry
from app.state.redis_client import RedisClient, connect, is_cluster
from tests.conftest import CLIENT_KEY, redis_settings
from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN_TOKEN, create_key, embed, wait_until
from tests.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_tokens_admit_what_fits_and_slide_with_the_window():
    clock = Clock()
    limiter = LocalTokenLimiter(window=60.0, clock=clock)
    assert limiter.hit("k", 100, 60).allowed
    clock.now += 10
    assert limiter.hit("k", 100, 40).allowed
    denied = limiter.hit("k", 100, 1)
    assert not denied.allowed and denied.remaining == 0
    assert denied.retry_after == pytest.approx(50.0)  # when the first 60 tokens leave
    clock.now += 50
    assert limiter.hit("k", 100, 60).allowed  # the first entry left: 40 + 60 fit
    assert not limiter.hit("k", 100, 1).allowed
    assert limiter.hit("other", 100, 100).allowed  # keys are independent


def test_a_request_bigger_than_the_whole_limit_never_fits():
    verdict = LocalTokenLimiter(clock=Clock()).hit("k", 100, 101)
    assert not verdict.allowed and verdict.retry_after is None


MODEL = "text-embedding-3-small"

# What the key-policy script calls, lower case as INFO names them.
SCRIPT_COMMANDS = {name.lower() for name in re.findall(r"redis\.call\('(\w+)'", KEY_POLICY)}


async def check(
    key_checks: KeyChecks, record: ApiKeyRecord, tokens: int, amount: float, member: str = ""
) -> KeyVerdict:
    """One policy check reserving `amount` under `member` (a fresh one when not given)."""
    ask = BudgetAsk(member or uuid.uuid4().hex, amount, 60.0)
    return await key_checks.check(record, tokens, ask)


async def settle(keys: ManagedKeys, record: ApiKeyRecord, member: str, amount: float) -> None:
    """What a request's settle writes: its cost charged, its reservation released."""
    entry = SpendEntry(record.id, amount, held_member(member, amount), datetime.now(UTC))
    await keys.store.apply_spend(uuid.uuid4().hex, [entry])


@pytest_asyncio.fixture(params=["standalone", "cluster"], loop_scope="function")
async def checks(request) -> AsyncIterator[Checks]:
    """A key store and the per-key checks on one real Redis (or Cluster), as a gateway has
    them, under prefixes of their own."""
    settings = Settings(_env_file=None, **redis_settings(request, request.param))  # type: ignore[call-arg]
    assert settings.REDIS_URL is not None
    redis = connect(settings.REDIS_URL, 1.0, settings.redis_options)
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={"RATE_LIMIT_KEY_PREFIX": f"rl:{tag}:", "KEYS_KEY_PREFIX": f"keys:{tag}:"}
    )
    keys = build_keys(settings, redis, Registry("test", {}, {}))
    assert keys is not None
    key_checks = build_key_checks(settings, redis, keys)
    try:
        yield Checks(redis, keys, key_checks, settings.KEYS_KEY_PREFIX)
    finally:
        await key_checks.aclose()
        await redis.aclose()


@dataclass
class Checks:
    redis: RedisClient
    keys: ManagedKeys
    key_checks: KeyChecks
    keys_prefix: str

    async def key(self, **policy) -> ApiKeyRecord:
        record, _ = await self.keys.create(KeyPolicy(**policy), "test")
        return record

    async def check(
        self, record: ApiKeyRecord, tokens: int, amount: float, member: str = ""
    ) -> KeyVerdict:
        return await check(self.key_checks, record, tokens, amount, member)

    async def held(self, record: ApiKeyRecord) -> int:
        """How many reservations the key has in flight."""
        return int(await self.redis.zcard(hold_key(self.keys_prefix, record.id)))

    async def commands(self) -> Counter[str]:
        """Every command Redis's masters have run so far, by name, INFO itself left out."""
        if is_cluster(self.redis):
            per_node = await self.redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        else:
            per_node = {"one": await self.redis.info("commandstats")}
        calls: Counter[str] = Counter()
        for stats in per_node.values():
            for name, figures in stats.items():
                if name != "cmdstat_info":
                    calls[name.removeprefix("cmdstat_")] += figures["calls"]
        return calls


async def test_redis_tokens_are_exact_under_concurrency(checks):
    record = await checks.key(tokens_per_minute=1000)
    verdicts = await asyncio.gather(*(checks.check(record, 30, 0.0) for _ in range(100)))
    assert sum(v.refused is None for v in verdicts) == 33  # 33 x 30 = 990: no 34th
    refused = next(v for v in verdicts if v.refused == "tokens")
    assert refused.tokens is not None and refused.tokens.remaining == 10
    assert refused.tokens.retry_after is not None and 59 < refused.tokens.retry_after <= 60
    assert (await checks.check(record, 10, 0.0)).refused is None  # what is left
    too_big = await checks.check(record, 2000, 0.0)
    assert too_big.tokens is not None and too_big.tokens.retry_after is None


async def test_rate_tokens_and_budget_are_one_script_call(checks):
    record = await checks.key(rate_limit_per_second=100, tokens_per_minute=10_000, budget_usd=1.0)
    await checks.check(record, 10, 0.0)  # the script is loaded now
    before = await checks.commands()
    verdict = await checks.check(record, 10, 0.25)
    ran = await checks.commands() - before
    # The commands a script runs count too: one EVALSHA is the one round trip (each of the
    # three parts used to be a script call of its own), and nothing ran outside it.
    assert ran["evalsha"] == 1 and "eval" not in ran
    assert set(ran) <= {"evalsha", *SCRIPT_COMMANDS}
    assert verdict.refused is None
    assert verdict.requests is not None and verdict.requests.remaining == 98
    assert verdict.tokens is not None and verdict.tokens.remaining == 10_000 - 20
    # Reserved (held in flight, as the first check's 0.0 is), not charged: a request is
    # charged when it settles.
    assert await checks.held(record) == 2
    assert (await checks.keys.spend(record.id))["total"] == 0


async def test_a_refused_request_uses_up_none_of_the_other_limits(checks):
    record = await checks.key(rate_limit_per_second=1000, tokens_per_minute=200, budget_usd=1.0)
    assert (await checks.check(record, 95, 0.5, "first")).refused is None
    refused = await checks.check(record, 200, 0.5)  # 295 tokens would not fit
    assert refused.refused == "tokens"
    # Not counted: 999 left (1000 if the first left the 1-second window meanwhile), never 998.
    assert refused.requests is not None and refused.requests.remaining in (999, 1000)
    assert await checks.held(record) == 1  # nothing held for the refused one
    assert (await checks.check(record, 5, 0.5, "second")).refused is None  # holds the rest
    # Nothing is spent yet, but what is in flight holds the whole budget: retry, not final.
    in_flight = await checks.check(record, 50, 0.5)
    assert (in_flight.refused, in_flight.spent_usd, in_flight.held_usd) == ("in_flight", 0, 1.0)
    await settle(checks.keys, record, "first", 0.5)
    await settle(checks.keys, record, "second", 0.5)
    assert await checks.held(record) == 0
    spent = await checks.check(record, 50, 0.5)
    assert (spent.refused, spent.spent_usd) == ("budget", 1.0)
    assert (await checks.keys.spend(record.id))["total"] == pytest.approx(1.0)
    # The budget's refusal counted none of its 50 tokens: 100 are used, so 100 more fit.
    unbudgeted = record.model_copy(update={"budget_usd": None})
    assert (await checks.check(unbudgeted, 100, 0.0)).refused is None


async def test_concurrent_keys_in_many_slots_each_keep_their_own_count(checks):
    records = [await checks.key(rate_limit_per_second=5, budget_usd=10.0) for _ in range(8)]
    verdicts = await asyncio.gather(*(checks.check(r, 1, 1.0) for r in records for _ in range(7)))
    admitted = [v.refused is None for v in verdicts]
    assert [sum(admitted[i * 7 : i * 7 + 7]) for i in range(8)] == [5] * 8
    assert [await checks.held(r) for r in records] == [5] * 8


async def test_prefixes_with_hash_tags_of_their_own_still_check_the_budget(request, caplog):
    """In a Cluster the limits and the spend then live in different slots: the budget is a
    call of its own, after the limits, and still holds."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        **redis_settings(request, "cluster"),
        RATE_LIMIT_KEY_PREFIX=f"{{rl{uuid.uuid4().hex[:6]}}}:",
        KEYS_KEY_PREFIX=f"{{keys{uuid.uuid4().hex[:6]}}}:",
    )
    assert settings.REDIS_URL is not None
    redis = connect(settings.REDIS_URL, 1.0, settings.redis_options)
    keys = build_keys(settings, redis, Registry("test", {}, {}))
    assert keys is not None
    key_checks = build_key_checks(settings, redis, keys)
    try:
        record, _ = await keys.create(KeyPolicy(rate_limit_per_second=10, budget_usd=1.0), "t")
        assert (await check(key_checks, record, 1, 0.6, "a")).refused is None
        # 0.6 held, and 0.6 more would not fit beside it: retry once it settles.
        assert (await check(key_checks, record, 1, 0.6)).refused == "in_flight"
        await settle(keys, record, "a", 0.6)
        # Nothing in flight and the budget not spent: admitted, though it may overshoot.
        assert (await check(key_checks, record, 1, 0.6, "b")).refused is None
        await settle(keys, record, "b", 0.6)
        assert (await check(key_checks, record, 1, 0.6)).refused == "budget"
        assert (await keys.spend(record.id))["total"] == pytest.approx(1.2)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # all in Redis
        requests_log = key_checks._keys_of(record.id)[0]
        assert await redis.zcard(requests_log) == 4
    finally:
        await key_checks.aclose()
        await redis.aclose()


async def test_redis_down_counts_limits_in_process_and_budgets_fail_closed(caplog, tmp_path):
    settings = Settings(_env_file=None, REDIS_URL="redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    redis = connect("redis://127.0.0.1:1/0", 0.2)
    keys = ManagedKeys(
        SQLiteKeyStore(tmp_path / "keys.db"), cache_seconds=1, model_exists=bool, backend="t"
    )
    key_checks = build_key_checks(settings, redis, keys)
    limited, _ = await keys.create(KeyPolicy(tokens_per_minute=50), "t")
    budgeted, _ = await keys.create(KeyPolicy(budget_usd=1.0), "t")
    try:
        with pytest.raises(KeyStoreUnavailable):
            await check(key_checks, budgeted, 1, 0.1)
        assert (await check(key_checks, limited, 30, 0.0)).refused is None
        assert (await check(key_checks, limited, 30, 0.0)).refused == "tokens"
    finally:
        await key_checks.aclose()
        await redis.aclose()
        await keys.aclose()
    assert any("counted in process" in r.getMessage() for r in caplog.records)


# --- through a real gateway ---------------------------------------------------------------------


def test_when_the_policy_script_fails_limits_count_in_process_and_budgets_fail_closed(
    registry_path,
):
    """Redis refusing scripts (an ACL here; a full or read-only Redis does the same) while key
    lookups still work: a key's limits are counted in process, a budget is never spent
    unchecked (503), and once Redis runs scripts again the limits are shared again."""
    with (
        RedisServer() as redis_server,
        ThreadedGateway(
            MODELS_CONFIG=str(registry_path),
            GATEWAY_API_KEYS=CLIENT_KEY,
            GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
            REDIS_URL=redis_server.url,
            RATE_LIMIT_PER_SECOND=0,
            AUTH_FAILURES_PER_MINUTE=0,
        ) as gateway,
        redis_server.client() as redis,
    ):
        text = f"policy down {uuid.uuid4().hex}"
        tokens = count_tokens([text])[0]
        limited = create_key(gateway.url, tokens_per_minute=2 * tokens)
        budgeted = create_key(gateway.url, budget_usd=100)
        assert embed(gateway.url, limited["key"], MODEL, text).status_code == 200  # in Redis
        redis.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval")
        # In process the count starts afresh: two requests fit, the third does not.
        statuses = [embed(gateway.url, limited["key"], MODEL, text).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = embed(gateway.url, budgeted["key"], MODEL, text)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "key_store_unavailable"
        assert refused.headers["retry-after"] == "1"

        redis.execute_command("ACL", "SETUSER", "default", "+@all")
        probe = create_key(gateway.url, tokens_per_minute=10**6)

        def probe_counted_in_redis() -> bool:
            assert embed(gateway.url, probe["key"], MODEL, text).status_code == 200
            return bool(redis.keys(f"*tpm:{probe['id']}:*"))

        wait_until(probe_counted_in_redis)
        # Back on Redis, which counted the first request: one more fits, then the log is full.
        statuses = [embed(gateway.url, limited["key"], MODEL, text).status_code for _ in range(2)]
        assert statuses == [200, 429]
