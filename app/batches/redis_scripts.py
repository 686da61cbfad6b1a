"""The Lua scripts of the Redis batch store (app/batches/redis_store.py): each one atomic step on
one batch's keys, which share the batch id's hash tag (one Cluster slot)."""

from __future__ import annotations

# KEYS: the batch hash. ARGV: the version read, the record, its status.
REPLACE = """
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'version', v + 1)
return 1
"""

# KEYS: the batch hash, its plans. ARGV: version, record, status, then index, plan pairs.
PLAN = """
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'version', v + 1,
           'chunks', (#ARGV - 3) / 2)
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

# KEYS: the batch hash, its outcomes. ARGV: index, outcome, then counter name, amount pairs.
COMPLETE = """
local won = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
if won == 1 then
  for i = 3, #ARGV, 2 do
    if ARGV[i] == 'spend_usd' then
      redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
    else
      redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
    end
  end
end
local done = redis.call('HLEN', KEYS[2])
local total = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
return {won, (total > 0 and done >= total) and 1 or 0}
"""

# KEYS: the batch hash. ARGV: worker.
DROP_LEASE = """
if redis.call('HGET', KEYS[1], 'lease_owner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
end
return 1
"""

# KEYS: the batch hash. ARGV: worker, now, until.
LEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local owner = redis.call('HGET', KEYS[1], 'lease_owner')
local until_ = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if owner and owner ~= ARGV[1] and until_ >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[1], 'lease_until', ARGV[3])
return 1
"""
