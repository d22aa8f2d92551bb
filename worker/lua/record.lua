-- Write the outcome of one check; on a final state also emit its event, exactly once.
-- KEYS: 1 result hash, 2 inflight zset, 3 events stream
-- ARGV: 1 generation, 2 final ('1'/'0'), 3 ttl seconds, 4 events maxlen, 5 container id,
--       6 number of hash fields n, 7 .. 6+2n field/value pairs, then event field/value pairs
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final')
if cur[1] ~= ARGV[1] then
  return {'stale', ''}
end
if cur[2] == '1' then
  -- A re-run of a check whose first run already finished: same state, no second event.
  return {'already_final', ''}
end
local n = tonumber(ARGV[6])
local fields = {}
for i = 7, 6 + 2 * n do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local event_id = ''
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[5])
  local ev = {}
  for i = 7 + 2 * n, #ARGV do
    ev[#ev + 1] = ARGV[i]
  end
  event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ev))
end
return {'ok', event_id}
