#!lua
-- Cancel a live poll (HTTP API, `threads-poller cancel`): final CANCELLED, its one event, its
-- webhook delivery job, its check job ended; all in one atomic step. From here on every write of
-- a run that still holds the job is refused (record.lua and publish_claim.lua refuse a final
-- poll), so nothing can overwrite the cancel; the run's lock is left to its lease.
-- A cancelled carousel child tells its parent at once, as record.lua does for any child that
-- ends without FINISHED: the parent names it (failed_child) and its job is due, to end as
-- CHILD_FAILED rather than wait out its window for a child that will never finish.
-- KEYS: 1 result hash, 2 inflight zset, 3 events stream, 4 queue (the checks'), 5 the
--       deliveries' queue (the webhook job's), 6 the check job's data, 7 its tries counter,
--       8 the webhook job's data (KEYS[1] again for none), 9 the stats hash of the minute the
--       caller expects (the one of Redis' minute is asked for, lib.lua), 10 a carousel child's
--       parent's result hash as the caller expects it (KEYS[1] again for none; asked for too),
--       11 the container's history (lib.lua, history)
-- ARGV: 1 one JSON object, its named arguments (worker/store/script_args.py, CancelArgs: every
--       value a string): container_id, generation (the one expected), job_id_base
--       ("<prefix>:check:<id>:"), last_error (text), ttl_seconds, events_max_len,
--       webhook_job_id ('' for none), stats_prefix ("<prefix>:stats:"), stats_ttl_seconds,
--       history (the cancel's history entry, "x|reason": worker/core/history.py),
--       result_prefix / check_prefix ("<prefix>:result:", "<prefix>:check:": Keys; a carousel
--       child's parent's keys);
--       2 the webhook job's data ('' for none; bytes: beside the table, which JSON could not
--       carry byte for byte)
-- Returns {'cancelled', event id} or {outcome, status}: 'unknown' (no hash), 'changed' (another
-- poll of the id started: read it again), 'final' (already final), 'publishing' (a publish call
-- may be under way: its outcome must be recorded first).
local args = cjson.decode(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final', 'status', 'publish_status',
  'account', 'checks', 'error_message', 'carousel_parent', 'parent_generation')
if not cur[1] then
  return {'unknown', ''}
end
if cur[1] ~= args.generation then
  return {'changed', cur[3] or ''}
end
if cur[2] == '1' then
  return {'final', cur[3] or ''}
end
if cur[4] == 'in_flight' then
  return {'publishing', cur[3] or ''}
end
local now = now_ms()
local stats = args.stats_prefix .. math.floor(now / 60000)
if not declared[stats] then
  return need(stats)
end
-- The parent as the hash says now (it may have been named a child since the caller read it).
local pkey = cur[8] and args.result_prefix .. cur[8]
if pkey and not declared[pkey] then
  return need(pkey)
end
local ttl = tonumber(args.ttl_seconds)
local job_id = args.job_id_base .. args.generation
redis.call('DEL', KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[4], job_id)
redis.call('ZREM', KEYS[2], args.container_id)
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'final', '1', 'finalized_at', stamp(now),
  'updated_at', stamp(now), 'last_error', args.last_error)
redis.call('HDEL', KEYS[1], 'next_check_at', 'last_error_kind', 'last_error_code',
  'last_error_subcode', 'last_error_fbtrace_id')
if cur[4] == 'pending' then
  -- Never attempted: no publish is due any more.
  redis.call('HDEL', KEYS[1], 'publish_status')
end
local event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', args.events_max_len, '*',
  'container_id', args.container_id, 'generation', args.generation, 'status', 'CANCELLED',
  'error_message', cur[7] or '',
  'account', cur[5] or '', 'checks', cur[6] or '0', 'last_error', args.last_error,
  'finalized_at', stamp(now))
if args.webhook_job_id ~= '' then
  redis.call('SET', KEYS[8], ARGV[2], 'PX', ttl * 1000)
  redis.call('ZADD', KEYS[5], now, args.webhook_job_id)
  redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
end
if pkey then
  local pjob = args.check_prefix .. cur[8] .. ':' .. (cur[9] or '')
  local p = redis.call('HMGET', pkey, 'generation', 'final', 'failed_child', 'children_ready_at')
  if p[1] == cur[9] and p[2] == '0' and not p[3] and not p[4] then
    redis.call('HSET', pkey, 'failed_child', args.container_id, 'failed_child_status',
      'CANCELLED', 'next_check_at', stamp(now))
    redis.call('ZADD', KEYS[4], 'XX', now, pjob)
  end
end
redis.call('HINCRBY', stats, 'final:CANCELLED', 1)
redis.call('EXPIRE', stats, args.stats_ttl_seconds)
redis.call('EXPIRE', KEYS[1], ttl)
history(KEYS[11], ttl * 1000, now, {args.history})
return {'cancelled', event_id}
