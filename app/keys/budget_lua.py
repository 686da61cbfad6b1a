"""The budget rule (`app.keys.store.budget_rule`) in Lua, for the Redis scripts that check a
budget: the key policy script (`app.keys.checks`) and the key store's own (`redis_store`).

A key's reservations in flight are a sorted set beside its spend hash (same Cluster slot),
members `{unique}:{amount}` scored by their deadline in µs of Redis's clock: a reservation
whose process died expires by itself, and a settle removes its own member.
"""

from __future__ import annotations

# budget(spend_key, hold_key, now_us, member, amount, budget, bucket, hold_ms) ->
#   outcome (0 admitted, 1 spent, 2 held in flight), spent, held. Holds `amount` if admitted.
BUDGET_FUNCTION = """
local function budget(spend_key, hold_key, now, member, amount_s, budget_s, bucket, hold_ms)
  redis.call('ZREMRANGEBYSCORE', hold_key, '-inf', now)
  local spent = tonumber(redis.call('HGET', spend_key, bucket) or '0')
  local held = 0
  for _, m in ipairs(redis.call('ZRANGE', hold_key, 0, -1)) do
    held = held + (tonumber(string.match(m, ':([^:]+)$')) or 0)
  end
  local amount = tonumber(amount_s)
  local outcome = 0
  if spent >= tonumber(budget_s) then
    outcome = 1
  elseif held > 0 and spent + held + amount > tonumber(budget_s) then
    outcome = 2
  end
  return outcome, spent, held
end
local function hold(hold_key, now, member, amount_s, hold_ms)
  redis.call('ZADD', hold_key, now + tonumber(hold_ms) * 1000, member .. ':' .. amount_s)
  redis.call('PEXPIRE', hold_key, tonumber(hold_ms) + 1000)
end
"""


def held_member(member: str, amount: float) -> str:
    """The sorted-set member a reservation of `amount` under `member` is stored as."""
    return f"{member}:{amount!r}"
