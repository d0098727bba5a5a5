"""The Lua scripts the replicas run on Redis (``EVALSHA``; plain Redis, no modules).

``ADMIT`` checks and charges the token buckets of a whole batch of requests, in their order, and
appends the batch's observations to the stream as one entry: however many requests a replica has
waiting on Redis at a moment, it makes one round trip for all of them (as the log makes one fsync
for every record waiting). The requests of a batch are admitted one after the other, exactly as
separate calls would (a bucket charged by one is seen charged by the next).
"""

from __future__ import annotations

# KEYS: stream, then the bucket keys of every request, in order.
# ARGV: maxlen, origin, payload ('' = nothing to append), number of requests; then per request:
# now ('' = Redis TIME), enforced (1/0), number of buckets; then per bucket: per_minute, cost, take.
# Returns, per request, {now, wait of each bucket} (flattened, as strings: Lua numbers would become integers).
ADMIT = """
local tnow
local function clock(v)
  if v ~= '' then return tonumber(v) end
  if not tnow then
    local t = redis.call('TIME')
    tnow = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tnow
end
local out = {}
local a, k = 5, 2
for r = 1, tonumber(ARGV[4]) do
  local now = clock(ARGV[a])
  local enforced = ARGV[a + 1] == '1'
  local n = tonumber(ARGV[a + 2])
  a = a + 3
  local lv, st, waits = {}, {}, {}
  local blocked = false
  for i = 1, n do
    local b = a + (i - 1) * 3
    local pm, cost = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
    local rate, cap = pm / 60.0, math.max(1.0, pm)
    local h = redis.call('HMGET', KEYS[k + i - 1], 'l', 's', 'pm')
    local level, stamp = cap, now
    if h[1] and tonumber(h[3]) == pm then level, stamp = tonumber(h[1]), tonumber(h[2]) end
    if now > stamp then level = math.min(cap, level + (now - stamp) * rate); stamp = now end
    local w = 0
    if level < cost and level < cap then
      if rate > 0 then w = (math.min(cost, cap) - level) / rate else w = 1e9 end
    end
    if w > 0 then blocked = true end
    lv[i], st[i], waits[i] = level, stamp, w
  end
  out[#out + 1] = tostring(now)
  for i = 1, n do
    local b = a + (i - 1) * 3
    local pm, take = tonumber(ARGV[b]), tonumber(ARGV[b + 2])
    local level = lv[i]
    if take > 0 and (not enforced or not blocked) then level = level - take end
    local rate, cap = pm / 60.0, math.max(1.0, pm)
    redis.call('HSET', KEYS[k + i - 1], 'l', tostring(level), 's', tostring(st[i]), 'pm', ARGV[b])
    redis.call('PEXPIRE', KEYS[k + i - 1], math.floor(((cap - level) / math.max(rate, 1e-9) + 60) * 1000))
    out[#out + 1] = tostring(waits[i])
  end
  a = a + 3 * n
  k = k + n
end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'o', ARGV[2], 'b', ARGV[3])
end
return out
"""

# Charge answered tokens to the token buckets that exist. KEYS: buckets; ARGV: now ('' = TIME), tokens.
CHARGE = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'l', 's', 'pm')
  if h[1] then
    local pm = tonumber(h[3])
    local rate, cap = pm / 60.0, math.max(1.0, pm)
    local level, stamp = tonumber(h[1]), tonumber(h[2])
    if now > stamp then level = math.min(cap, level + (now - stamp) * rate); stamp = now end
    level = level - tonumber(ARGV[2])
    redis.call('HSET', KEYS[i], 'l', tostring(level), 's', tostring(stamp))
    redis.call('PEXPIRE', KEYS[i], math.floor(((cap - level) / math.max(rate, 1e-9) + 60) * 1000))
  end
end
return 1
"""
