"""Usage reaches Redis exactly once, whatever one bad record or a lost answer does: the ledger
against a real redis-server."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.errors import UsageUnavailable
from app.state.batched_writes import StoreFailed
from app.state.redis_client import connect
from app.state.usage_ledger import UsageLedger, today
from app.state.usage_redis import RedisUsageBooks
from tests.redis_server import RedisServer

MODEL = "m"
INT64_MAX = 2**63 - 1


@pytest_asyncio.fixture(loop_scope="function")
async def ledger(redis_server) -> AsyncIterator[UsageLedger]:
    client = connect(redis_server.url, 1.0)
    books = RedisUsageBooks(client, prefix=f"egw:test:{uuid.uuid4().hex[:10]}:", timeout=1.0)
    yield UsageLedger(books, report_timeout=1.0)
    await client.aclose()


def hash_of(redis_server, ledger: UsageLedger, key_id: str) -> dict[str, int | float]:
    with redis_server.client() as client:
        raw = client.hgetall(books_of(ledger).hash_name((today().isoformat(), key_id, MODEL)))
    out: dict[str, int | float] = {}
    for field, value in raw.items():
        figure = field.decode().partition("\t")[2]
        out[figure] = float(value) if figure == "cost_usd" else int(value)
    return out


def books_of(ledger: UsageLedger) -> RedisUsageBooks:
    assert isinstance(ledger.books, RedisUsageBooks)
    return ledger.books


def record(ledger: UsageLedger, key_id: str, tokens: int) -> None:
    ledger.record(
        key_id,
        MODEL,
        input_tokens=tokens,
        upstream_tokens=tokens,
        cached_tokens=0,
        price_per_million=1.0,
    )


async def test_one_refused_increment_neither_blocks_nor_replays_the_others(
    ledger, redis_server, caplog
):
    # A counter already at int64's maximum: Redis refuses any HINCRBY on it.
    with redis_server.client() as client:
        name = books_of(ledger).hash_name((today().isoformat(), "key_full", MODEL))
        client.hset(name, f"{MODEL}\trequests", INT64_MAX)
    record(ledger, "key_full", 5)
    record(ledger, "key_a", 10)
    record(ledger, "key_b", 20)
    caplog.set_level(logging.WARNING, logger="app.usage")
    for _ in range(4):  # the flusher runs every second; nothing may be applied twice
        await ledger.flush()
    assert hash_of(redis_server, ledger, "key_a") == {
        "requests": 1,
        "input_tokens": 10,
        "upstream_tokens": 10,
        "cost_usd": pytest.approx(10e-6),
    }
    assert hash_of(redis_server, ledger, "key_b")["requests"] == 1
    full = hash_of(redis_server, ledger, "key_full")
    assert full["requests"] == INT64_MAX
    assert full["input_tokens"] == 5  # the other figures of the same record still count
    assert any("refused" in r.getMessage() for r in caplog.records)


async def test_an_absurd_figure_is_clamped_and_the_rest_applied_once(ledger, redis_server):
    record(ledger, "key_huge", 2**63)  # would overflow HINCRBY by itself
    record(ledger, "key_ok", 7)
    for _ in range(3):
        await ledger.flush()
    assert hash_of(redis_server, ledger, "key_ok")["requests"] == 1
    assert hash_of(redis_server, ledger, "key_ok")["input_tokens"] == 7
    huge = hash_of(redis_server, ledger, "key_huge")
    assert huge["requests"] == 1
    assert 0 < huge["input_tokens"] <= 2**53


async def test_a_batch_sent_again_after_a_lost_answer_counts_once(ledger, redis_server):
    record(ledger, "key_a", 3)
    batch = dict(ledger._local)
    # What a resend after a timeout does: the same batch under the same ID, twice.
    await ledger._apply("batch-1", batch)
    await ledger._apply("batch-1", batch)
    assert hash_of(redis_server, ledger, "key_a")["requests"] == 1
    await ledger._apply("batch-2", batch)  # a new batch is a new batch
    assert hash_of(redis_server, ledger, "key_a")["requests"] == 2


async def test_while_redis_is_down_figures_wait_and_arrive_once():
    with RedisServer() as server:
        client = connect(server.url, 0.5)
        books = RedisUsageBooks(client, prefix="egw:test:down:", timeout=0.5)
        ledger = UsageLedger(books, report_timeout=0.5)
        server.stop()
        record(ledger, "key_a", 4)
        for _ in range(2):
            with pytest.raises(StoreFailed):
                await ledger.flush()
        with pytest.raises(UsageUnavailable):  # a 503, never a report without the books
            await ledger.report("key_a", today(), today())
        record(ledger, "key_a", 1)  # while a batch waits, new figures add up beside it
        assert ledger.health()["unsent_batches"] == 1
        server.start()
        await ledger.flush()
        await ledger.flush()
        assert hash_of(server, ledger, "key_a")["requests"] == 2
        rows = await ledger.report("key_a", today(), today())
        assert [(r.requests, r.input_tokens) for r in rows] == [(2, 5)]
        await client.aclose()
