-- Admit one request for one key, atomically: check every limit first, commit only if all pass.
--
-- Requests and tokens per minute are GCRA buckets (a token bucket stored as one number, the
-- "theoretical arrival time"): capacity = the per-minute limit, refilled continuously over 60 s.
-- The stored value minus now is the time until the bucket is full again.
--
-- KEYS[1] leases (sorted set: lease id -> expiry ms)   KEYS[2] requests bucket
-- KEYS[3] tokens bucket                                KEYS[4] daily token counter (UTC day)
-- KEYS[5] usage markers (hash)                        KEYS[6] usage marker deadlines (sorted set)
-- KEYS[7...] budget counters (hash: "s" spent, "r" reserved; in units of 1e-8 of the currency)
-- KEYS[7 + number of budgets] (optional) the response cache entry of the request: when it exists the request
--       is a hit, and takes one request from the requests bucket and nothing else (no lease, no tokens, no
--       budget reservation, no marker); the entry is returned after the other values
-- ARGV: lease_id, lease_ttl_ms, max_concurrent, rpm, tpm, daily_tokens, estimate, need_lease,
--       request_id, marker, marker_deadline (epoch s)   (a limit of 0 means "not set"; no marker: '')
--       then (optional) number of budgets n, the reservation (units), n budget limits, n counter TTLs (s, 0 = none)
-- Returns {code, retry_ms, requests_remaining, requests_reset_ms, tokens_remaining, tokens_reset_ms, daily_used,
--          budget (1-based index of the refusing or missing budget, else 0), its spent, its reserved,
--          the cache entry (a hit only)}
-- code: 0 admitted, 1 concurrency, 2 requests, 3 tokens, 4 daily_tokens, 5 tokens (request larger than tpm),
--       6 budget (the one with the least left among those the reservation would overdraw),
--       7 a budget counter is missing (new period or lost): the caller seeds it from the database and asks again

local window = 60000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000

local lease_id = ARGV[1]
local lease_ttl = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
local daily = tonumber(ARGV[6])
local estimate = tonumber(ARGV[7])
local need_lease = ARGV[8] == '1'
local marker = ARGV[10]
-- Budgets: every one that applies must hold the request's maximum cost on top of what is spent and reserved.
local budgets = tonumber(ARGV[12] or '0')

local cached = false
local cache_key = KEYS[7 + budgets]
if cache_key then
    cached = redis.call('GET', cache_key)
    if cached then
        max_concurrent, tpm, daily, estimate, need_lease, marker, budgets = 0, 0, 0, 0, false, '', 0
    end
end

local code = 0
local retry = -1

if need_lease then
    -- Leases of processes that died without settling expire here.
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
if max_concurrent > 0 and redis.call('ZCARD', KEYS[1]) >= max_concurrent then
    code = 1
    retry = 1000
end

-- Float slack so that N admissions of 60000/N ms each fit exactly into the window.
local function slack(interval)
    return math.min(1, interval / 2)
end

local req_interval, req_tat, req_next = 0, now, now
if rpm > 0 then
    req_interval = window / rpm
    req_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
    req_next = req_tat + req_interval
    if code == 0 and req_next - now > window + slack(req_interval) then
        code = 2
        retry = req_next - now - window
    end
end

local tok_interval, tok_tat, tok_next = 0, now, now
if tpm > 0 then
    tok_interval = window / tpm
    tok_tat = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
    tok_next = tok_tat + estimate * tok_interval
    if code == 0 then
        if estimate > tpm then
            code = 5
        elseif tok_next - now > window + slack(tok_interval) then
            code = 3
            retry = tok_next - now - window
        end
    end
end

local daily_used = 0
if daily > 0 then
    daily_used = tonumber(redis.call('GET', KEYS[4]) or '0')
    if code == 0 and daily_used + estimate > daily then
        code = 4
        retry = 86400000 - (now % 86400000)
    end
end

local reserve = tonumber(ARGV[13] or '0')
local budget, budget_spent, budget_reserved = 0, 0, 0
if code == 0 and budgets > 0 then
    local least = nil
    for i = 1, budgets do
        local values = redis.call('HMGET', KEYS[6 + i], 's', 'r')
        if not values[1] then
            code = 7
            budget = i
            break
        end
        local spent = tonumber(values[1])
        local reserved = tonumber(values[2] or '0')
        local left = tonumber(ARGV[13 + i]) - spent - reserved
        if reserve > left and (least == nil or left < least) then
            least = left
            budget, budget_spent, budget_reserved = i, spent, reserved
        end
    end
    if code == 0 and budget > 0 then
        code = 6
    end
end

if code == 0 then
    for i = 1, budgets do
        if reserve > 0 then
            redis.call('HINCRBY', KEYS[6 + i], 'r', reserve)
        end
        local ttl = tonumber(ARGV[13 + budgets + i])
        if ttl > 0 then
            redis.call('EXPIRE', KEYS[6 + i], ttl)
        end
    end
    if need_lease then
        redis.call('ZADD', KEYS[1], now + lease_ttl, lease_id)
        redis.call('PEXPIRE', KEYS[1], lease_ttl + 1000)
    end
    if rpm > 0 then
        redis.call('SET', KEYS[2], string.format('%.3f', req_next), 'PX', math.ceil(req_next - now) + 1000)
        req_tat = req_next
    end
    if tpm > 0 and estimate > 0 then
        redis.call('SET', KEYS[3], string.format('%.3f', tok_next), 'PX', math.ceil(tok_next - now) + 1000)
        tok_tat = tok_next
    end
    if daily > 0 then
        daily_used = redis.call('INCRBY', KEYS[4], estimate)
        redis.call('EXPIRE', KEYS[4], 172800)
    end
    -- The usage "started" marker, in the same step: an admitted request is never without one.
    if marker ~= nil and marker ~= '' then
        redis.call('HSET', KEYS[5], ARGV[9], marker)
        redis.call('ZADD', KEYS[6], ARGV[11], ARGV[9])
    end
end

local function remaining(tat, interval)
    if interval == 0 then
        return 0
    end
    return math.max(0, math.floor((window - (tat - now) + slack(interval)) / interval))
end

local result = {
    code,
    math.ceil(retry),
    remaining(req_tat, req_interval),
    math.ceil(req_tat - now),
    remaining(tok_tat, tok_interval),
    math.ceil(tok_tat - now),
    daily_used,
    budget,
    budget_spent,
    budget_reserved,
}
if cached then
    result[11] = cached
end
return result
