-- Record a container and schedule its first check, atomically. The hash gets only the fields
-- that say something at this point; every other field is added by the first write that has a
-- value for it (record.lua, publish_claim.lua, the webhook job), and readers take a missing field
-- as empty / 0 / false.
-- KEYS: 1 result hash, 2 inflight zset, 3 arq queue, 4 accounts zset
-- ARGV: 1 container_id, 2 now, 3 deadline, 4 ttl seconds, 5 generation, 6 arq job prefix,
--       7 job id base, 8 job payload, 9 job expiry ms, 10 score ms, 11 account, 12 force,
--       13 arq in-progress prefix, 14 publish ('1'/'0'), 15 webhook url
local cur = redis.call('HMGET', KEYS[1], 'final', 'generation', 'status')
local restarted = '0'
if cur[1] == '0' then
  local old_job = ARGV[7] .. (cur[2] or '')
  if redis.call('EXISTS', ARGV[6] .. old_job, ARGV[13] .. old_job) > 0 then
    return {'duplicate', cur[3] or ''}
  end
  -- The poll's job is gone (lost, expired): start a fresh poll rather than leave it orphaned.
  restarted = '1'
elseif cur[1] == '1' then
  if ARGV[12] ~= '1' then
    return {'final', cur[3] or ''}
  end
  restarted = '1'
end
local job_id = ARGV[7] .. ARGV[5]
redis.call('DEL', KEYS[1])
-- Only what carries information: a field missing from the hash means "" / 0 / false (README).
local fields = {'container_id', ARGV[1], 'status', 'QUEUED', 'final', '0',
  'enqueued_at', ARGV[2], 'deadline_at', ARGV[3], 'generation', ARGV[5]}
if ARGV[11] ~= '' then
  fields[#fields + 1] = 'account'
  fields[#fields + 1] = ARGV[11]
end
if ARGV[14] == '1' then
  fields[#fields + 1] = 'publish'
  fields[#fields + 1] = '1'
end
if ARGV[15] ~= '' then
  fields[#fields + 1] = 'webhook_url'
  fields[#fields + 1] = ARGV[15]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PSETEX', ARGV[6] .. job_id, ARGV[9], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[10], job_id)
if ARGV[11] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[11])
end
if restarted == '1' then
  return {'restarted', 'QUEUED'}
end
return {'enqueued', 'QUEUED'}
