-- Read-only view of one key's limits, in the same units as limits_admit.lua.
-- KEYS[1] leases   KEYS[2] requests bucket   KEYS[3] tokens bucket   KEYS[4] daily token counter
-- Returns {now_ms, in_flight, requests_tat_ms, tokens_tat_ms, daily_used} (tat 0 = bucket full)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local in_flight = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
return {
    tostring(now),
    in_flight,
    redis.call('GET', KEYS[2]) or '0',
    redis.call('GET', KEYS[3]) or '0',
    tonumber(redis.call('GET', KEYS[4]) or '0'),
}
