#!lua
-- Record one run of a poll's check job, if that run still owns the poll: the outcome, and then
-- either the job's next run or, on a final state, the end of the job, the one event and the
-- webhook delivery job, all in one atomic step (a torn record cannot happen).
-- A carousel child's final record also reports to its parent's poll, in the same step: a
-- FINISHED child counts down the parent's children_pending, and the last one starts the parent's
-- own window and makes its job due; any other ending names the child in the parent
-- (failed_child) and makes the parent's job due, which then ends it as CHILD_FAILED.
-- KEYS: 1 result hash, 2 inflight zset, 3 events stream, 4 queue (the checks'), 5 the job's
--       lock, 6 its tries counter, 7 its data, 8 the deliveries' queue (the webhook job's),
--       9 the account's pacing calendar (lib.lua, reserve_slot), 10 the webhook job's data key
--       (KEYS[1] again for none), 11 a carousel child's parent's result hash as the caller
--       expects it (KEYS[1] again for none; the one the hash names is asked for, lib.lua),
--       12 the poll's history (lib.lua, history), 13 the parent's history as the caller expects
--       it (KEYS[12] again for none; asked for like the parent's hash)
-- ARGV: 1 one JSON object, its named arguments (worker/store/script_args.py, RecordArgs: every
--       value a string): token (the run's), generation, job_id, final ('1'/'0'), want_ms (the
--       next run wanted at, ms), pace_step_ms (0: none), ttl_seconds, events_max_len,
--       container_id, webhook_job_id ('' for none), fields_count (n),
--       status (this record's), error_message (its), waiting_parent ('1' when this run planned
--       a carousel parent still waiting for its children), history (this record's history
--       entries, "<kind>|fields" newline-separated, '' for none: worker/core/history.py,
--       record_entries), result_prefix / history_prefix / check_prefix ("<prefix>:result:",
--       "<prefix>:history:", "<prefix>:check:": Keys; a carousel child's parent's keys);
--       2 the webhook job's data ('' for none; bytes: beside the table, which JSON could not
--       carry byte for byte),
--       3 .. 2+2n field/value pairs (an empty value deletes the field), then the event's
--       field/value pairs
-- A child's parent is read from the child's hash here, at the record, not from what the run
-- read at its claim: a container named a carousel's child while its run was under way still
-- reports to that carousel.
-- Returns {'ok', event id, next run ms} / {'stale', reason}: a run that lost its lease (a newer
-- run holds the job) changes nothing; a job whose poll is over or was replaced is ended. A
-- repeat of a record that went through answers {'ok', '', next run ms or ''}.
local args = cjson.decode(ARGV[1])
if not owns(KEYS[5], args.token) then
  -- This very run's record, sent again because its reply was lost: it went through, so the
  -- answer is the same ('ok'), not 'lease lost' (last_run names the run that wrote last).
  local mine = redis.call('HMGET', KEYS[1], 'generation', 'last_run')
  if mine[1] == args.generation and mine[2] == args.token then
    return {'ok', '', redis.call('ZSCORE', KEYS[4], args.job_id) or ''}
  end
  return {'stale', 'lease lost'}
end
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final')
if cur[1] ~= args.generation or cur[2] == '1' then
  redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  redis.call('ZREM', KEYS[4], args.job_id)
  return {'stale', cur[1] == args.generation and 'already final' or 'replaced'}
end
local results = args.result_prefix  -- "<prefix>:result:" (Keys)
local link = {false, false}
if args.final == '1' then
  link = redis.call('HMGET', KEYS[1], 'carousel_parent', 'parent_generation')
  if link[1] and not declared[results .. link[1]] then
    return need(results .. link[1])
  end
  if link[1] and not declared[args.history_prefix .. link[1]] then
    return need(args.history_prefix .. link[1])
  end
end
local now = now_ms()
local n = tonumber(args.fields_count)
local base = 3  -- the hash's field/value pairs, after the table and the webhook job's data
local ttl = tonumber(args.ttl_seconds)

local function report_to_parent(pkey, phist, parent, pgen, pjob)
  local p = redis.call('HMGET', pkey, 'generation', 'final', 'enqueued_at', 'deadline_at',
    'failed_child', 'children_ready_at')
  if p[1] ~= pgen or p[2] ~= '0' or p[5] or p[6] then
    return
  end
  -- The parent's story names the child's ending (its history keeps the parent hash's TTL).
  history(phist, ttl * 1000, now, {'k|' .. args.container_id .. '|' ..
    (HISTORY_STATUS[args.status] or args.status)})
  local due = now
  if args.status == 'FINISHED' then
    if redis.call('HINCRBY', pkey, 'children_pending', -1) > 0 then
      redis.call('EXPIRE', pkey, ttl)
      return
    end
    -- The parent's own window (as long as it was given) starts now.
    local window = math.floor((tonumber(p[4]) - tonumber(p[3])) * 1000 + 0.5)
    due = reserve_slot(KEYS[9], tonumber(args.pace_step_ms), now, now)
    redis.call('HSET', pkey, 'children_ready_at', stamp(now),
      'deadline_at', stamp(now + window), 'next_check_at', stamp(due))
    redis.call('ZADD', KEYS[2], (now + window) / 1000, parent)
  else
    redis.call('HSET', pkey, 'failed_child', args.container_id, 'failed_child_status',
      args.status, 'next_check_at', stamp(now))
    if args.error_message ~= '' then
      redis.call('HSET', pkey, 'failed_child_error', args.error_message)
    end
  end
  redis.call('ZADD', KEYS[4], 'XX', due, pjob)
  redis.call('EXPIRE', pkey, ttl)
end

local fields, gone = {'updated_at', stamp(now), 'last_run', args.token}, {}
for i = base, base - 2 + 2 * n, 2 do
  if ARGV[i + 1] == '' then
    gone[#gone + 1] = ARGV[i]
  else
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
end
local event_id, at, waited = '', '', 0
if args.final == '1' then
  fields[#fields + 1] = 'finalized_at'
  fields[#fields + 1] = stamp(now)
  gone[#gone + 1] = 'next_check_at'
  redis.call('ZREM', KEYS[2], args.container_id)
  local ev = {}
  for i = base + 2 * n, #ARGV do
    ev[#ev + 1] = ARGV[i]
  end
  ev[#ev + 1] = 'finalized_at'
  ev[#ev + 1] = stamp(now)
  event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', args.events_max_len, '*', unpack(ev))
  if args.webhook_job_id ~= '' then
    redis.call('SET', KEYS[10], ARGV[2], 'PX', ttl * 1000)
    redis.call('ZADD', KEYS[8], now, args.webhook_job_id)
    fields[#fields + 1] = 'webhook_status'
    fields[#fields + 1] = 'pending'
  end
  redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  redis.call('ZREM', KEYS[4], args.job_id)
  if link[1] then
    local pgen = link[2] or ''
    report_to_parent(results .. link[1], args.history_prefix .. link[1], link[1], pgen,
      args.check_prefix .. link[1] .. ':' .. pgen)
  end
else
  local want = math.max(tonumber(args.want_ms), now)
  if args.waiting_parent == '1' and redis.call('HEXISTS', KEYS[1], 'children_ready_at') +
      redis.call('HEXISTS', KEYS[1], 'failed_child') > 0 then
    -- A child reported while this run planned from the parent's older state: run it again now
    -- rather than at the safety net's time.
    want = now
  end
  at = reserve_slot(KEYS[9], tonumber(args.pace_step_ms), want, now)
  waited = at - want
  fields[#fields + 1] = 'next_check_at'
  fields[#fields + 1] = stamp(at)
  redis.call('ZADD', KEYS[4], 'XX', at, args.job_id)
  redis.call('DEL', KEYS[5])
  -- The job lives as long as its poll's hash (a poll longer than a day keeps its job).
  redis.call('PEXPIRE', KEYS[6], ttl * 1000)
  redis.call('PEXPIRE', KEYS[7], ttl * 1000)
end
redis.call('HSET', KEYS[1], unpack(fields))
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
end
if waited > 0 then
  -- The wait for a pacing slot pushes the window out, like a throttle pause.
  redis.call('HINCRBYFLOAT', KEYS[1], 'window_delay', waited / 1000)
end
redis.call('EXPIRE', KEYS[1], ttl)
local story = {}
for e in string.gmatch(args.history, '[^\n]+') do
  story[#story + 1] = e
end
if waited > 0 then
  story[#story + 1] = 'w|' .. waited
end
history(KEYS[12], ttl * 1000, now, story)
return {'ok', event_id, at}
