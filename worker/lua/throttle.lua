-- One more throttled answer for an account: raise its back-off level and push its pause out.
-- KEYS: 1 account hash
-- ARGV: 1 now, 2 base seconds, 3 max seconds, 4 at least until (from usage headers, or 0),
--       5 graph code, 6 ttl seconds
local level = redis.call('HINCRBY', KEYS[1], 'throttle_level', 1)
local delay = tonumber(ARGV[2]) * (2 ^ (level - 1))
if delay > tonumber(ARGV[3]) then delay = tonumber(ARGV[3]) end
local untl = tonumber(ARGV[1]) + delay
if tonumber(ARGV[4]) > untl then untl = tonumber(ARGV[4]) end
local cur = tonumber(redis.call('HGET', KEYS[1], 'throttled_until') or '') or 0
if cur > untl then untl = cur end
redis.call('HSET', KEYS[1], 'throttled_until', tostring(untl), 'last_throttle_code', ARGV[5],
  'last_throttled_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'throttled_total', 1)
redis.call('EXPIRE', KEYS[1], ARGV[6])
return tostring(untl)
