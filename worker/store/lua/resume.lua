#!lua
-- The reconciler's repair for a live poll without a job (lost to a Redis failover or an AOF
-- that was not fsynced): give it its job back, due now. The planner then decides what that run
-- does (a check, or TIMED_OUT if its window is over). A job that is there is left as it is.
-- KEYS: 1 result hash, 2 queue, 3 job data, 4 job lock
-- ARGV: 1 generation, 2 job id, 3 job data, 4 ttl seconds
-- Returns 'resumed' (its data was gone), 'requeued' (its data was there, not its queue entry)
-- or 'ok' (nothing to do).
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final')
if cur[1] ~= ARGV[1] or cur[2] ~= '0' then
  return 'ok'
end
local outcome = 'ok'
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', tonumber(ARGV[4]) * 1000)
  outcome = 'resumed'
end
if redis.call('EXISTS', KEYS[4]) == 0 and not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  redis.call('ZADD', KEYS[2], now_ms(), ARGV[2])
  outcome = outcome == 'ok' and 'requeued' or outcome
end
return outcome
