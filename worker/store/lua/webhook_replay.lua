#!lua
-- Replay a dead-lettered webhook delivery: its job again (the same delivery id and signed body;
-- the worker signs each attempt afresh, so the replay carries a new timestamp), its attempts
-- counted from 1, the dead letter removed; atomically. Refused while a delivery of the same id
-- is live (its job or its lock exists).
-- KEYS: 1 dead-letter stream, 2 the deliveries' queue, 3 job data key, 4 job lock,
--       5 job tries, 6 result hash
-- ARGV: 1 dead letter id, 2 job id, 3 job data, 4 job ttl ms, 5 generation
-- Returns 'replayed', 'gone' (no such dead letter) or 'busy'.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return 'gone'
end
if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
  return 'busy'
end
redis.call('DEL', KEYS[5])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', KEYS[2], now_ms(), ARGV[2])
if redis.call('HGET', KEYS[6], 'generation') == ARGV[5] then
  redis.call('HSET', KEYS[6], 'webhook_status', 'pending')
  redis.call('HDEL', KEYS[6], 'webhook_next_at')
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 'replayed'
