"""A managed key's policy on one request in one Redis round trip: its requests per second, its
tokens per minute and its budget are checked together by one script, and counted only when all
of them admit the request (a request refused for one reason uses up none of the others).

Checks that arrive while a call is out go together in the next one (`app.state.coalescing`),
applied in order, so they stay exact across workers and replicas. The five keys of one API key
(its request log, its token log and that log's running sum, its spend hash, its reservations)
share a Cluster slot: the other keys carry the spend key's hash tag, so the spend key keeps the
name it has always had. (If the two prefixes carry different hash tags of their own, the budget
goes in a call of its own after the limits.) A budget is a reservation, not a charge: the
request's ceiling is held until it settles (`app.keys.policy`), by the rule of
`app.keys.store.budget_rule`.

Failure: when Redis fails or is slow, the limits are counted in process for a second (then
Redis is tried again), as the per-IP limit does; the budget fails closed, as it always has: a
key with a budget gets 503 `KeyStoreUnavailable` rather than spending unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app import metrics
from app.errors import KeyStoreUnavailable
from app.keys.budget_lua import BUDGET_FUNCTION
from app.keys.limits import TOKEN_WINDOW_SECONDS, LocalKeyLimits, TokenDecision
from app.keys.model import ApiKeyRecord, utcnow
from app.keys.service import ManagedKeys
from app.keys.store import Reservation, spend_buckets
from app.state.coalescing import Coalescer
from app.state.rate_limits import WINDOW_SECONDS, Decision
from app.state.redis_client import REDIS_FAILURES, RedisClient, hash_tag, is_cluster, slot_of

log = logging.getLogger("app.keys")

OUTAGE_SECONDS = 1.0

# KEYS, five per check: its request log (a sorted set of members scored by µs), its token log
# (members `member:tokens`), that log's running sum, its spend hash, its reservations. ARGV:
# the two windows (µs), then eight per check: request limit, token limit, tokens, a unique
# member, the amount to reserve, the budget, the budget's bucket, the hold (ms) ('' = not set:
# that part is not checked). Returns eight per check: refused (0 admitted, 1 requests,
# 2 tokens, 3 budget spent, 4 budget held in flight), requests in the window, µs until the
# oldest leaves, tokens in the window, µs until the oldest leaves, µs until this request's
# tokens would fit (-1: never, over the limit), the settled spend in the budget's period and
# what is held in flight, before this request. Redis's own clock: gateways whose clocks
# disagree still agree on the windows.
KEY_POLICY = (
    BUDGET_FUNCTION
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local req_window = tonumber(ARGV[1])
local tok_window = tonumber(ARGV[2])
local out = {}
for c = 0, #KEYS / 5 - 1 do
  local req_key, tok_key = KEYS[c * 5 + 1], KEYS[c * 5 + 2]
  local sum_key, spend_key, hold_key = KEYS[c * 5 + 3], KEYS[c * 5 + 4], KEYS[c * 5 + 5]
  local a = 2 + c * 8
  local req_limit = tonumber(ARGV[a + 1])
  local tok_limit = tonumber(ARGV[a + 2])
  local tokens = tonumber(ARGV[a + 3])
  local member = ARGV[a + 4]
  local refused = 0
  local count = 0
  if req_limit then
    redis.call('ZREMRANGEBYSCORE', req_key, '-inf', now - req_window)
    count = redis.call('ZCARD', req_key)
    if count >= req_limit then refused = 1 end
  end
  local used = 0
  if tok_limit then
    used = tonumber(redis.call('GET', sum_key) or '0')
    local old = redis.call('ZRANGEBYSCORE', tok_key, '-inf', now - tok_window)
    if #old > 0 then
      for _, m in ipairs(old) do
        used = used - tonumber(string.match(m, ':(%d+)$'))
      end
      redis.call('ZREMRANGEBYSCORE', tok_key, '-inf', now - tok_window)
    end
    if redis.call('ZCARD', tok_key) == 0 then used = 0 end
    if refused == 0 and used + tokens > tok_limit then refused = 2 end
  end
  local spent, held = 0, 0
  if ARGV[a + 6] ~= '' then
    local outcome
    outcome, spent, held = budget(spend_key, hold_key, now, member, ARGV[a + 5], ARGV[a + 6],
                                  ARGV[a + 7], ARGV[a + 8])
    if refused == 0 and outcome > 0 then refused = 2 + outcome end
  end
  if refused == 0 then
    if req_limit then
      redis.call('ZADD', req_key, now, member)
      redis.call('PEXPIRE', req_key, math.ceil(req_window / 1000))
      count = count + 1
    end
    if tok_limit then
      redis.call('ZADD', tok_key, now, member .. ':' .. ARGV[a + 3])
      used = used + tokens
    end
    if ARGV[a + 6] ~= '' then hold(hold_key, now, member, ARGV[a + 5], ARGV[a + 8]) end
  end
  local req_reset = 0
  if req_limit then
    local oldest = redis.call('ZRANGE', req_key, 0, 0, 'WITHSCORES')
    if oldest[2] then req_reset = tonumber(oldest[2]) + req_window - now end
  end
  local tok_reset, tok_wait = 0, 0
  if tok_limit then
    local ttl = math.ceil(tok_window / 1000)
    redis.call('SET', sum_key, used, 'PX', ttl)
    redis.call('PEXPIRE', tok_key, ttl)
    local oldest = redis.call('ZRANGE', tok_key, 0, 0, 'WITHSCORES')
    if oldest[2] then tok_reset = tonumber(oldest[2]) + tok_window - now end
    if refused == 2 then
      tok_wait = -1
      if tokens <= tok_limit then
        local entries = redis.call('ZRANGE', tok_key, 0, -1, 'WITHSCORES')
        local freed = 0
        for i = 1, #entries, 2 do
          freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
          if used - freed + tokens <= tok_limit then
            tok_wait = tonumber(entries[i + 1]) + tok_window - now
            break
          end
        end
      end
    end
  end
  for _, v in ipairs({refused, count, req_reset, used, tok_reset, tok_wait}) do
    out[#out + 1] = v
  end
  out[#out + 1] = tostring(spent)
  out[#out + 1] = tostring(held)
end
return out
"""
)

Refusal = Literal["requests", "tokens", "budget", "in_flight"]
_REFUSALS: dict[int, Refusal | None] = {
    0: None,
    1: "requests",
    2: "tokens",
    3: "budget",
    4: "in_flight",
}
_RESERVATION_REFUSALS: dict[Reservation, Refusal | None] = {
    "admitted": None,
    "spent": "budget",
    "in_flight": "in_flight",
}


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    requests: Decision | None  # None: the key sets no request rate
    tokens: TokenDecision | None  # None: the key sets no tokens per minute
    refused: Refusal | None = None
    spent_usd: float = 0.0  # the budget's period, settled, before this request
    held_usd: float = 0.0  # what other requests in flight reserved


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """A reservation to make: `amount` (the request's ceiling) under `member`, held at most
    `hold_seconds` (past it, a dead process's reservation frees itself)."""

    member: str
    amount: float
    hold_seconds: float


@dataclass(frozen=True, slots=True)
class _Check:
    keys: tuple[str, str, str, str, str]
    args: tuple[str | int, ...]
    with_budget: bool


class KeyChecks:
    """Every managed key's policy checks of one process; shared through Redis when it is given
    one (then the key store is Redis too, `app.keys.build`)."""

    def __init__(
        self,
        redis: RedisClient | None,
        keys: ManagedKeys,
        *,
        prefix: str,
        spend_key: Callable[[str], str],
        hold_key: Callable[[str], str],
        timeout: float,
        store_timeout: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._prefix = prefix
        self._spend_key = spend_key
        self._hold_key = hold_key
        self._timeout = timeout
        self._store_timeout = store_timeout  # a budget's bound, as for any key-store call
        self._local = LocalKeyLimits()
        self._down_until = 0.0
        self._script = None
        self._calls: Coalescer[_Check, list[Any]] | None = None
        self._budget_in_script = True
        if redis is not None:
            self._script = redis.register_script(KEY_POLICY)
            self._calls = Coalescer(redis, self._send, lambda c: c.keys[0], failed=self._is_down)
            sample = self._keys_of("sample")
            self._budget_in_script = not is_cluster(redis) or len({*map(slot_of, sample)}) == 1

    async def check(self, record: ApiKeyRecord, tokens: int, ask: BudgetAsk) -> KeyVerdict:
        """Check and count the key's limits, and reserve `ask.amount` against its budget: all
        of it, or nothing when a part refuses. Raises KeyStoreUnavailable when a budget cannot
        be checked (it fails closed); a refusal is the verdict's `refused`."""
        calls = self._calls
        if calls is None or self._is_down():
            return await self._check_here(record, tokens, ask)
        with_budget = record.budget_usd is not None and self._budget_in_script
        answer = await calls(self._check_of(record, tokens, ask, with_budget))
        if answer is None:  # Redis failed this call
            if with_budget:
                raise KeyStoreUnavailable()
            return await self._check_here(record, tokens, ask)
        verdict = self._verdict(record, answer)
        if verdict.refused is None and record.budget_usd is not None and not with_budget:
            return await self._reserve(record, ask, verdict)
        return verdict

    async def aclose(self) -> None:
        if self._calls is not None:
            self._calls.cancel()

    async def _reserve(
        self, record: ApiKeyRecord, ask: BudgetAsk, verdict: KeyVerdict
    ) -> KeyVerdict:
        """The budget in a store call of its own (no Redis, or another Cluster slot)."""
        assert record.budget_usd is not None
        reserved = await self._keys.reserve(record, ask.member, ask.amount, ask.hold_seconds)
        return KeyVerdict(
            verdict.requests,
            verdict.tokens,
            _RESERVATION_REFUSALS[reserved.outcome],
            reserved.spent_usd,
            reserved.held_usd,
        )

    # -- in process (no Redis, or while it fails) -------------------------------------------

    async def _check_here(self, record: ApiKeyRecord, tokens: int, ask: BudgetAsk) -> KeyVerdict:
        requests = tokens_verdict = None
        if record.rate_limit_per_second is not None:
            requests = self._local.check_requests(record.id, record.rate_limit_per_second)
            if not requests.allowed:
                return KeyVerdict(requests, None, "requests")
        if record.tokens_per_minute is not None:
            tokens_verdict = self._local.check_tokens(record.id, record.tokens_per_minute, tokens)
            if not tokens_verdict.allowed:
                return KeyVerdict(requests, tokens_verdict, "tokens")
        verdict = KeyVerdict(requests, tokens_verdict)
        if record.budget_usd is None:
            return verdict
        return await self._reserve(record, ask, verdict)  # its own store call; fails closed

    # -- in Redis ---------------------------------------------------------------------------

    def _keys_of(self, key_id: str) -> tuple[str, str, str, str, str]:
        spend = self._spend_key(key_id)
        tag = f"{{{hash_tag(spend)}}}"  # the spend key's slot
        tokens = f"{self._prefix}tpm:{key_id}:{tag}"
        requests = f"{self._prefix}rps:{key_id}:{tag}"
        return requests, tokens, tokens + ":sum", spend, self._hold_key(key_id)

    def _check_of(
        self, record: ApiKeyRecord, tokens: int, ask: BudgetAsk, with_budget: bool
    ) -> _Check:
        def given(value: object | None) -> str:
            return "" if value is None else str(value)

        budget: tuple[str, str, str, str | int] = ("", "", "", "")
        if with_budget:
            budget = (
                repr(ask.amount),
                repr(record.budget_usd),
                spend_buckets(utcnow())[record.budget_period],
                round(ask.hold_seconds * 1000),
            )
        requests_log, tokens_log, tokens_sum, spend, held = self._keys_of(record.id)
        # Without its budget the spend keys are left out: they may be in another slot (a
        # Cluster refuses a script whose keys span slots), and the script does not touch them.
        return _Check(
            (
                requests_log,
                tokens_log,
                tokens_sum,
                spend if with_budget else requests_log,
                held if with_budget else requests_log,
            ),
            (
                given(record.rate_limit_per_second),
                given(record.tokens_per_minute),
                tokens,
                ask.member,
                *budget,
            ),
            with_budget,
        )

    async def _send(self, checks: list[_Check]) -> list[list[Any]] | None:
        assert self._script is not None
        timeout = self._store_timeout if any(c.with_budget for c in checks) else self._timeout
        windows = (round(WINDOW_SECONDS * 1_000_000), round(TOKEN_WINDOW_SECONDS * 1_000_000))
        try:
            async with asyncio.timeout(timeout):
                flat = await self._script(
                    keys=[k for c in checks for k in c.keys],
                    args=[*windows, *(a for c in checks for a in c.args)],
                )
        except REDIS_FAILURES as exc:
            metrics.REDIS_ERRORS.labels("ratelimit").inc()
            if time.monotonic() >= self._down_until + OUTAGE_SECONDS:  # once per outage
                log.warning(
                    "per-key limits counted in process for %gs (%s)",
                    OUTAGE_SECONDS,
                    type(exc).__name__,
                )
            self._down_until = time.monotonic() + OUTAGE_SECONDS
            return None
        return [flat[i : i + 8] for i in range(0, len(flat), 8)]

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _verdict(self, record: ApiKeyRecord, answer: list[Any]) -> KeyVerdict:
        refused_code, count, req_reset, used, tok_reset, tok_wait, spent, held = answer
        refused = _REFUSALS[int(refused_code)]
        requests = tokens_verdict = None
        if (limit := record.rate_limit_per_second) is not None:
            reset = max(int(req_reset) / 1_000_000, 0.0)
            allowed = refused != "requests"
            requests = Decision(
                allowed, limit, max(0, limit - int(count)), reset, 0.0 if allowed else reset
            )
        if (limit := record.tokens_per_minute) is not None:
            wait = None if int(tok_wait) < 0 else int(tok_wait) / 1_000_000
            tokens_verdict = TokenDecision(
                refused != "tokens",
                limit,
                max(0, limit - int(used)),
                max(int(tok_reset) / 1_000_000, 0.0),
                wait,
            )
        return KeyVerdict(requests, tokens_verdict, refused, float(spent), float(held))
