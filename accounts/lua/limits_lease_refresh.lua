-- Push a live lease's expiry forward (long streams); a lease already released stays released.
-- KEYS[1] leases   ARGV: lease_id, lease_ttl_ms
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local ttl = tonumber(ARGV[2])
local updated = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[1])
if updated == 1 then
    redis.call('PEXPIRE', KEYS[1], ttl + 1000)
end
return updated
