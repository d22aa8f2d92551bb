#!lua
-- Settle one run of a webhook delivery job, if the run still owns it: delivered, retry later,
-- or dead (the dead letter keeps the signed body, so it can be replayed). The poll's hash is
-- updated only while it still holds the generation the delivery is about: a forced re-enqueue
-- starts a new poll, and the old poll's delivery still goes out (its body is in the job).
-- KEYS: 1 result hash, 2 the deliveries' queue, 3 lock, 4 tries, 5 job data,
--       6 dead-letter stream, 7 the container's history (lib.lua, history)
-- ARGV: 1 run token, 2 job id, 3 generation, 4 'delivered' / 'retry' / 'dead', 5 attempt,
--       6 retry delay ms, 7 reason ('' when delivered), 8 job ttl ms, 9 dead letters maxlen,
--       10 the attempt's history entry ("h|fields": worker/core/history.py, webhook_entry),
--       11.. dead letter field/value pairs (with 'dead')
-- Returns 1, or 0 when the run no longer owns the job.
if not owns(KEYS[3], ARGV[1]) then
  return 0
end
local now = now_ms()
local mine = redis.call('HGET', KEYS[1], 'generation') == ARGV[3]
if mine then
  -- Kept as long as the poll's hash (this script does not change the hash's TTL).
  history(KEYS[7], redis.call('PTTL', KEYS[1]), now, {ARGV[10]})
end
if ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[6]), ARGV[2])
  redis.call('DEL', KEYS[3])
  redis.call('PEXPIRE', KEYS[4], ARGV[8])
  redis.call('PEXPIRE', KEYS[5], ARGV[8])
  if mine then
    redis.call('HSET', KEYS[1], 'webhook_attempts', ARGV[5], 'webhook_last_error', ARGV[7],
      'webhook_next_at', stamp(now + tonumber(ARGV[6])))
  end
  return 1
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[4] == 'dead' then
  local fields = {}
  for i = 11, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  fields[#fields + 1] = 'at'
  fields[#fields + 1] = stamp(now)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[9], '*', unpack(fields))
end
if mine then
  redis.call('HSET', KEYS[1], 'webhook_status', ARGV[4], 'webhook_attempts', ARGV[5])
  if ARGV[4] == 'delivered' then
    redis.call('HSET', KEYS[1], 'webhook_delivered_at', stamp(now))
  else
    redis.call('HSET', KEYS[1], 'webhook_last_error', ARGV[7])
  end
  redis.call('HDEL', KEYS[1], 'webhook_next_at')
end
return 1
