-- Settle one admitted request: release its lease and, the first time only, correct the token
-- counters by (actual - reserved). The lease doubles as the "not yet settled" marker.
--
-- KEYS[1] leases   KEYS[2] tokens bucket   KEYS[3] daily token counter of the admission's day
-- KEYS[4...] the admission's budget counters
-- ARGV: lease_id, delta_tokens, tpm (0 = not set), daily_tokens (0 = not set),
--       then (optional) number of budgets, the reservation and the real cost (units of 1e-8)
-- Returns 1 when this call settled the lease, 0 when it was already settled or had expired.
--
-- The real cost is always added (a call finishes once; a lease that expired meanwhile does not make its
-- spend vanish); the reservation is released with the lease only, so it is never released twice. A counter
-- that is gone (Redis lost it) is not recreated: it is seeded again from the usage records.

local settled = redis.call('ZREM', KEYS[1], ARGV[1])
local budgets = tonumber(ARGV[5] or '0')
for i = 1, budgets do
    local key = KEYS[3 + i]
    if redis.call('EXISTS', key) == 1 then
        if ARGV[7] ~= '0' then
            redis.call('HINCRBY', key, 's', ARGV[7])
        end
        if settled == 1 and ARGV[6] ~= '0' and redis.call('HINCRBY', key, 'r', '-' .. ARGV[6]) < 0 then
            redis.call('HSET', key, 'r', 0)
        end
    end
end
if settled == 0 then
    return 0
end
local delta = tonumber(ARGV[2])
if delta == 0 then
    return 1
end

local tpm = tonumber(ARGV[3])
if tpm > 0 then
    local clock = redis.call('TIME')
    local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
    local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
    local corrected = math.max(tat + delta * 60000 / tpm, now)
    if corrected > now then
        redis.call('SET', KEYS[2], string.format('%.3f', corrected), 'PX', math.ceil(corrected - now) + 1000)
    else
        redis.call('DEL', KEYS[2])
    end
end

if tonumber(ARGV[4]) > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
    if redis.call('INCRBY', KEYS[3], delta) < 0 then
        redis.call('SET', KEYS[3], 0, 'KEEPTTL')
    end
end
return 1
