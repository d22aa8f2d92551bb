#!lua
-- Settle one run of a webhook delivery job, if the run still owns it: delivered, retry later,
-- or dead (the dead letter keeps the signed body, so it can be replayed). The poll's hash is
-- updated only while it still holds the generation the delivery is about: a forced re-enqueue
-- starts a new poll, and the old poll's delivery still goes out (its body is in the job).
-- KEYS: 1 result hash, 2 the deliveries' queue, 3 lock, 4 tries, 5 job data,
--       6 dead-letter stream, 7 the container's history (lib.lua, history)
-- ARGV: 1 one JSON object, its named arguments (worker/store/script_args.py, WebhookSettleArgs:
--       every value a string): token (the run's), job_id, generation, outcome ('delivered' /
--       'retry' / 'dead'), attempt, delay_ms (the retry's), reason ('' when delivered),
--       job_ttl_ms, dead_letters_max_len, history (the attempt's history entry, "h|fields":
--       worker/core/history.py, webhook_entry);
--       2.. dead letter field/value pairs (with 'dead')
-- Returns 1, or 0 when the run no longer owns the job.
local args = cjson.decode(ARGV[1])
if not owns(KEYS[3], args.token) then
  return 0
end
local now = now_ms()
local mine = redis.call('HGET', KEYS[1], 'generation') == args.generation
if mine then
  -- Kept as long as the poll's hash (this script does not change the hash's TTL).
  history(KEYS[7], redis.call('PTTL', KEYS[1]), now, {args.history})
end
if args.outcome == 'retry' then
  redis.call('ZADD', KEYS[2], 'XX', now + tonumber(args.delay_ms), args.job_id)
  redis.call('DEL', KEYS[3])
  redis.call('PEXPIRE', KEYS[4], args.job_ttl_ms)
  redis.call('PEXPIRE', KEYS[5], args.job_ttl_ms)
  if mine then
    redis.call('HSET', KEYS[1], 'webhook_attempts', args.attempt, 'webhook_last_error',
      args.reason, 'webhook_next_at', stamp(now + tonumber(args.delay_ms)))
  end
  return 1
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[2], args.job_id)
if args.outcome == 'dead' then
  local fields = {}
  for i = 2, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  fields[#fields + 1] = 'at'
  fields[#fields + 1] = stamp(now)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', args.dead_letters_max_len, '*', unpack(fields))
end
if mine then
  redis.call('HSET', KEYS[1], 'webhook_status', args.outcome, 'webhook_attempts', args.attempt)
  if args.outcome == 'delivered' then
    redis.call('HSET', KEYS[1], 'webhook_delivered_at', stamp(now))
  else
    redis.call('HSET', KEYS[1], 'webhook_last_error', args.reason)
  end
  redis.call('HDEL', KEYS[1], 'webhook_next_at')
end
return 1
