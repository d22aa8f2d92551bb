#!lua
-- Record a container and schedule its first check, atomically, on Redis' clock. The hash gets
-- only the fields that say something at this point; every other field is added by the first
-- write that has a value for it, and readers take a missing field as empty / 0 / false.
-- A carousel is one call for its parent (ARGV 19: its children), then one per child (ARGV 17,
-- 18: the parent and the parent's new generation), in one MULTI: a child is touched only if its
-- parent's poll was (re)started by this very call.
-- KEYS: 1 result hash, 2 inflight zset, 3 queue, 4 accounts zset, 5 the deployment's config hash,
--       6 a carousel child's parent's result hash (else KEYS[1] again)
-- ARGV: 1 container_id, 2 window ms, 3 ttl seconds, 4 generation, 5 job key prefix,
--       6 job id base ("<prefix>:check:<id>:"), 7 job data, 8 lock prefix, 9 account,
--       10 force ('1'/'0'), 11 publish ('1'/'0'), 12 webhook url, 13 pacing step ms (0: none),
--       14 pacing key of the account, 15 intake entry id ('' when not from the intake),
--       16 reply_to ('' for none), 17 parent id (a carousel child; ''), 18 parent generation,
--       19 children "A,B,..." (a carousel parent; ''), 20 number of children
-- Returns {outcome, status}: enqueued / restarted / duplicate / final (/ skipped: a child of a
-- carousel that was not started).
local child = ARGV[17] ~= ''
if child and redis.call('HGET', KEYS[6], 'generation') ~= ARGV[18] then
  return {'skipped', ''}
end
local cur = redis.call('HMGET', KEYS[1], 'final', 'generation', 'status', 'intake_entry')
if ARGV[15] ~= '' and cur[4] == ARGV[15] then
  -- The same intake entry again (a consumer died between this enqueue and its XACK): it
  -- started this poll already, force or not.
  return {'duplicate', cur[3] or ''}
end
local restarted = '0'
if cur[1] == '0' then
  local old_job = ARGV[6] .. (cur[2] or '')
  if redis.call('EXISTS', ARGV[5] .. old_job, ARGV[8] .. old_job) > 0 then
    if child then
      -- Already being polled: its final record will report to this carousel (no second poll).
      redis.call('HSET', KEYS[1], 'carousel_parent', ARGV[17], 'parent_generation', ARGV[18])
    end
    return {'duplicate', cur[3] or ''}
  end
  -- The poll's job is gone (lost with a failover): start a fresh poll rather than leave it.
  restarted = '1'
elseif cur[1] == '1' then
  -- A carousel that starts polls its children again: their earlier outcome is not its own.
  if ARGV[10] ~= '1' and not child then
    return {'final', cur[3] or ''}
  end
  restarted = '1'
end
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
local account = ARGV[9]
-- The workers' pacing rate rules (they publish it at start, KEYS[5]); the producer's own
-- setting is only the fallback before any worker has run.
local step = tonumber(redis.call('HGET', KEYS[5], 'pace_step_ms') or ARGV[13])
local parent = ARGV[19] ~= ''
local first
if parent then
  -- A carousel's parent is not checked before its children are FINISHED: its job waits for the
  -- last child's record (record.lua makes it due), or, as a safety net, the window's end.
  first = deadline
else
  first = reserve_slot(ARGV[14], step, now, now)
end
local job_id = ARGV[6] .. ARGV[4]
local ttl = tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
local fields = {'container_id', ARGV[1], 'status', 'QUEUED', 'final', '0',
  'enqueued_at', stamp(now), 'deadline_at', stamp(deadline), 'generation', ARGV[4],
  'next_check_at', stamp(first)}
-- An optional field is stored only when given (the hash stores an empty value by its absence).
local function put(name, value)
  if value ~= '' then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
if first > now and not parent then
  put('window_delay', tostring((first - now) / 1000))
end
put('account', account)
put('publish', ARGV[11] == '1' and '1' or '')
put('webhook_url', ARGV[12])
put('intake_entry', ARGV[15])
put('reply_to', ARGV[16])
if child then
  put('carousel_parent', ARGV[17])
  put('parent_generation', ARGV[18])
end
if parent then
  put('children', ARGV[19])
  put('children_pending', ARGV[20])
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], deadline / 1000, ARGV[1])
redis.call('SET', ARGV[5] .. job_id, ARGV[7], 'PX', ttl * 1000)
redis.call('ZADD', KEYS[3], first, job_id)
if account ~= '' then
  redis.call('ZADD', KEYS[4], now / 1000, account)
end
if restarted == '1' then
  return {'restarted', 'QUEUED'}
end
return {'enqueued', 'QUEUED'}
