#!lua
-- End or re-schedule a job whose run owns it (jobs other than checks: record.lua settles those).
-- KEYS: 1 queue, 2 lock, 3 tries, 4 job data, 5 a poll's result hash (with ARGV 6)
-- ARGV: 1 run token, 2 job id, 3 'done' or 'retry', 4 retry delay ms, 5 job ttl ms,
--       6 generation ('' for none): with it, 'done' is refused while that poll is live
-- Returns 1, or 0 when the run no longer owns the job (or the guarded poll is live).
if not owns(KEYS[2], ARGV[1]) then
  return 0
end
if ARGV[3] == 'done' and ARGV[6] ~= '' then
  local cur = redis.call('HMGET', KEYS[5], 'generation', 'final')
  if cur[1] == ARGV[6] and cur[2] == '0' then
    return 0
  end
end
if ARGV[3] == 'done' then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('ZREM', KEYS[1], ARGV[2])
else
  redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[4]), ARGV[2])
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1
