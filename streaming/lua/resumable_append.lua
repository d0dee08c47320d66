-- Append events to a resumable stream's buffer, within its own cap and the cap of all buffers together.
-- KEYS: 1 the stream (a Redis Stream, entry ids 0-<seq>), 2 its meta hash, 3 the total of buffered bytes,
--       4 the hash of each buffer's bytes, 5 the sorted set of buffers by the time they expire.
-- ARGV: 1 stream id, 2 now (ms), 3 ttl (ms, from now), 4 the stream's cap (bytes), 5 the total cap (bytes),
--       6 the stream's cap (events), 7 "end" to close the stream after these events (else ""),
--       then pairs: seq, event bytes.
-- Returns 1 (appended), 0 (over a cap: nothing appended, the stream is marked over_cap and closed).
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])

-- Buffers past their expiry no longer count in the total (Redis dropped them; their sizes stay here until now).
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
for _, sid in ipairs(expired) do
  local size = tonumber(redis.call('HGET', KEYS[4], sid) or '0')
  redis.call('DECRBY', KEYS[3], size)
  redis.call('HDEL', KEYS[4], sid)
  redis.call('ZREM', KEYS[5], sid)
end

local adding, count = 0, 0
for i = 8, #ARGV, 2 do
  adding = adding + #ARGV[i + 1]
  count = count + 1
end
local mine = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
local events = tonumber(redis.call('HGET', KEYS[2], 'events') or '0')
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'over_cap' then
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
if mine + adding > tonumber(ARGV[4]) or total + adding > tonumber(ARGV[5]) or events + count > tonumber(ARGV[6]) then
  -- Closed with a marker past the last event, so readers waiting for more learn it at once.
  redis.call('HSET', KEYS[2], 'state', 'over_cap')
  redis.call('XADD', KEYS[1], '0-' .. (last + 1), 'x', 'over_cap')
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
  return 0
end
for i = 8, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'e', ARGV[i + 1])
  last = tonumber(ARGV[i])
end
if count > 0 then
  redis.call('HSET', KEYS[2], 'last', last)
  redis.call('HINCRBY', KEYS[2], 'events', count)
  redis.call('HINCRBY', KEYS[4], ARGV[1], adding)
  redis.call('INCRBY', KEYS[3], adding)
end
if ARGV[7] == 'end' then
  redis.call('HSET', KEYS[2], 'state', 'ended')
  redis.call('XADD', KEYS[1], '0-' .. (last + 1), 'x', 'ended')
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
return 1
