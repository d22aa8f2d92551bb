-- Write the outcome of one check; on a final state also emit its event, exactly once, and (when
-- a webhook is configured) create its delivery job in the same step, so none can be lost.
-- KEYS: 1 result hash, 2 inflight zset, 3 events stream, 4 arq queue; with arq bookkeeping
--       also 5 the job's in-progress lock, 6 its retry counter, 7 its data (arq's keys)
-- ARGV: 1 generation, 2 final ('1'/'0'), 3 ttl seconds, 4 events maxlen, 5 container id,
--       6 number of hash fields n, 7 webhook job key ('' for none), 8 webhook job id,
--       9 webhook job payload, 10 webhook job expiry ms, 11 webhook job score ms,
--       12 arq bookkeeping ('' none, 'done', 'retry'), 13 arq job id, 14 its next score ms,
--       15 .. 14+2n field/value pairs, then event field/value pairs
-- With 'done' or 'retry' it also does, once the outcome is written, what arq's finish_job does
-- after a run (worker/arq_job_runner.py): the job's end and its next run are then atomic with
-- the outcome, and a run costs one round trip less.
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final')
if cur[1] ~= ARGV[1] then
  return {'stale', ''}
end
if cur[2] == '1' then
  -- A re-run of a check whose first run already finished: same state, no second event.
  return {'already_final', ''}
end
local n = tonumber(ARGV[6])
-- An empty value is stored as a missing field (readers take missing as empty / 0 / false).
local fields, gone = {}, {}
for i = 15, 13 + 2 * n, 2 do
  if ARGV[i + 1] == '' then
    gone[#gone + 1] = ARGV[i]
  else
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local event_id = ''
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[5])
  local ev = {}
  for i = 15 + 2 * n, #ARGV do
    ev[#ev + 1] = ARGV[i]
  end
  event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ev))
  if ARGV[7] ~= '' then
    redis.call('PSETEX', ARGV[7], ARGV[10], ARGV[9])
    redis.call('ZADD', KEYS[4], ARGV[11], ARGV[8])
    redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
  end
end
if ARGV[12] == 'done' then
  redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  redis.call('ZREM', KEYS[4], ARGV[13])
elseif ARGV[12] == 'retry' then
  redis.call('DEL', KEYS[5])
  redis.call('ZADD', KEYS[4], 'XX', ARGV[14], ARGV[13])
end
return {'ok', event_id}
