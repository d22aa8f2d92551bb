-- Record a container and schedule its first check, atomically.
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
redis.call('HSET', KEYS[1],
  'container_id', ARGV[1], 'status', 'QUEUED', 'final', '0', 'checks', '0',
  'error_message', '', 'error_explanation', '', 'last_api_status', '',
  'enqueued_at', ARGV[2], 'deadline_at', ARGV[3], 'next_check_at', ARGV[2],
  'last_checked_at', '', 'finalized_at', '', 'updated_at', ARGV[2],
  'last_error', '', 'last_error_kind', '', 'last_error_code', '', 'last_error_subcode', '',
  'last_error_fbtrace_id', '', 'throttled', '0', 'throttle_delay', '0', 'last_throttled_at', '',
  'publish', ARGV[14], 'publish_status', '', 'publish_attempts', '0', 'media_id', '',
  'published_at', '', 'finished_at', '', 'quota_usage', '', 'quota_total', '',
  'webhook_url', ARGV[15], 'webhook_status', '', 'webhook_attempts', '0',
  'account', ARGV[11], 'generation', ARGV[5])
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
