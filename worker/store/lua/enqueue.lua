#!lua
-- Record a container and schedule its first check, atomically, on Redis' clock. The hash gets
-- only the fields that say something at this point; every other field is added by the first
-- write that has a value for it, and readers take a missing field as empty / 0 / false.
-- A carousel is one call for its parent (ARGV 19: its children), then one per child (ARGV 17,
-- 18: the parent and the parent's new generation), in one MULTI: a child is touched only if its
-- parent's poll was (re)started by this very call.
-- KEYS: 1 result hash, 2 inflight zset, 3 queue, 4 accounts zset, 5 the deployment's config hash,
--       6 a carousel child's parent's result hash (else KEYS[1] again), 7 the account's pacing
--       calendar (lib.lua, reserve_slot), 8 the new check job's data key, 9 the container's
--       history (lib.lua, history), then a carousel parent's children's result hashes; a hash the script learns of as it reads (a
--       container's live carousel) is asked for (lib.lua, need)
-- ARGV: 1 container_id, 2 window ms, 3 ttl seconds, 4 generation, 5 unused (was the job key
--       prefix),
--       6 job id base ("<prefix>:check:<id>:"), 7 job data, 8 unused (was the lock prefix),
--       9 account,
--       10 force ('1'/'0'), 11 publish ('1'/'0'), 12 webhook url, 13 pacing step ms (0: none),
--       14 unused (was the pacing key, now KEYS[7]), 15 intake entry id ('' when not from the
--       intake),
--       16 reply_to ('' for none), 17 parent id (a carousel child; ''), 18 parent generation,
--       19 children "A,B,..." (a carousel parent; ''), 20 number of children,
--       21 producer name ('default' for the implicit one), 22/23/24 whether that producer may
--       force / publish / give a webhook url ('1'/'0'), 25 the accounts it may use ('*', or
--       ',id,id,'): its scope (config/producers.py), enforced here, in the same step as the
--       write, so that no check-then-write race lets a request past it,
--       26 the poll's W3C traceparent ('' for none; stored only when it is one, as data),
--       27 the poll's platform ('threads' / 'instagram': api_client.platforms; a live poll of
--       the same id on another platform is refused)
-- Returns {outcome, status, reason}: enqueued / restarted / duplicate / final / refused (a
-- carousel's rule, with the reason) (/ skipped: a child of a carousel that was not started);
-- a refusal by the producer's scope is {'refused', status, reason, 'scope'}.
local child = ARGV[17] ~= ''
if child and redis.call('HGET', KEYS[6], 'generation') ~= ARGV[18] then
  return {'skipped', ''}
end
local cur = redis.call('HMGET', KEYS[1], 'final', 'generation', 'status', 'intake_entry',
  'carousel_parent', 'parent_generation', 'publish_status', 'media_id', 'published_at',
  'producer', 'account', 'earlier_publish')
local results = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])  -- "<prefix>:result:"

-- Producers' scopes (issue 21). A request outside its producer's scope is refused before
-- anything is written, whatever door it came through (the doors check it too, to say so early).
local producer = ARGV[21]
local function may_use(account)
  -- '' (no account: the deployment's own token) is in no list: only '*' allows it.
  return ARGV[25] == '*' or (account ~= '' and string.find(ARGV[25], ',' .. account .. ',', 1,
    true) ~= nil)
end
local function scope_refusal(why)
  return {'refused', cur[3] or '', 'producer ' .. producer .. ' may not ' .. why, 'scope'}
end
-- A poll belongs to the producer that started it (a missing field: 'default'). Changing one
-- that another producer started (restarting it, or taking it into a carousel) takes what
-- restarting it would let the caller set: the right to force and to use the poll's account.
-- So producer B never restarts A's finished container with B's flags, webhook or account.
local function foreign(owner, account)
  owner = owner or 'default'
  if owner == producer or (ARGV[22] == '1' and may_use(account or '')) then
    return nil
  end
  return 'change a poll that producer ' .. owner .. ' started (that takes force and its ' ..
    'account ' .. ((account or '') ~= '' and account or '(none)') .. ')'
end
if not may_use(ARGV[9]) then
  return scope_refusal(ARGV[9] == '' and 'poll without an account' or 'use account ' .. ARGV[9])
end
if ARGV[10] == '1' and ARGV[22] ~= '1' then
  return scope_refusal('force')
end
if ARGV[11] == '1' and ARGV[23] ~= '1' then
  return scope_refusal('publish')
end
if ARGV[12] ~= '' and ARGV[24] ~= '1' then
  return scope_refusal('give a webhook_url')
end

-- The carousel a container belongs to while that carousel's poll is live ('' for none); nil
-- when its hash was not declared (asked then names it: the script asks for it, lib.lua).
local asked = nil
local function live_parent(parent, generation)
  if not parent or parent == '' then
    return ''
  end
  if not declared[results .. parent] then
    asked = results .. parent
    return nil
  end
  local p = redis.call('HMGET', results .. parent, 'generation', 'final')
  if p[1] == generation and p[2] == '0' then
    return parent
  end
  return ''
end

-- A publish that went out, or may have, for this container (in any earlier poll).
local function posted(status)
  return status == 'in_flight' or status == 'unconfirmed' or status == 'published'
end

if ARGV[19] ~= '' then
  -- A carousel's rules, checked before anything is written: a container belongs to at most one
  -- live carousel, is not a carousel itself, and is not published (or publishing) on its own.
  for c in string.gmatch(ARGV[19], '[^,]+') do
    if not declared[results .. c] then
      return need(results .. c)
    end
    local h = redis.call('HMGET', results .. c, 'final', 'carousel_parent', 'parent_generation',
      'publish_status', 'children', 'producer', 'account', 'earlier_publish')
    -- A child polled before (live: taken in; final: polled again) may be another producer's.
    local theirs = h[1] and foreign(h[6], h[7])
    if theirs then
      local r = scope_refusal(theirs)
      r[3] = r[3] .. ': child ' .. c
      return r
    end
    local other = live_parent(h[2], h[3])
    if asked then
      return need(asked)
    end
    if other ~= '' and other ~= ARGV[1] then
      return {'refused', '', 'child ' .. c .. ' belongs to carousel ' .. other ..
        ', still being polled'}
    end
    if h[1] == '0' and h[5] then
      return {'refused', '', 'child ' .. c .. ' is a carousel being polled'}
    end
    if posted(h[4]) or posted(h[8]) then
      return {'refused', '', 'child ' .. c .. ' was published (or may have been) on its own'}
    end
  end
end
if not child and ARGV[19] == '' and (ARGV[10] == '1' or ARGV[11] == '1') then
  -- A live carousel's child is polled and published through its carousel only.
  local owner = live_parent(cur[5], cur[6])
  if asked then
    return need(asked)
  end
  if owner ~= '' then
    return {'refused', cur[3] or '', 'a child of carousel ' .. owner ..
      ', still being polled: enqueue the carousel again instead'}
  end
end
if ARGV[15] ~= '' and cur[4] == ARGV[15] then
  -- The same intake entry again (a consumer died between this enqueue and its XACK): it
  -- started this poll already, force or not.
  return {'duplicate', cur[3] or ''}
end
local platform = ARGV[27] or ''
if platform == '' then
  platform = 'threads'
end
local restarted = '0'
if cur[1] == '0' then
  -- Its job is live while it is in the queue (every path that ends a job takes it out; a
  -- claim, a record, a release keep it in): the queue is declared, the job's keys need not be.
  local old_job = ARGV[6] .. (cur[2] or '')
  if redis.call('ZSCORE', KEYS[3], old_job) then
    -- (Read here only: a live duplicate is the one path that needs it.)
    local polled_on = redis.call('HGET', KEYS[1], 'platform') or 'threads'
    if polled_on ~= platform then
      -- One id, two platforms: the live poll asks its own platform; this request would be
      -- answered about another container, so it is refused, not folded in as a duplicate.
      return {'refused', cur[3] or '', 'container ' .. ARGV[1] .. ' is being polled on ' ..
        polled_on .. ', not ' .. platform}
    end
    if child then
      -- Already being polled: its final record will report to this carousel (no second poll),
      -- and it is no longer published on its own (the carousel is; publish_claim.lua refuses a
      -- poll without 'publish', and the parent refused one whose publish had started).
      redis.call('HSET', KEYS[1], 'carousel_parent', ARGV[17], 'parent_generation', ARGV[18])
      redis.call('HDEL', KEYS[1], 'publish', 'publish_verify')
      if cur[7] == 'pending' then
        redis.call('HDEL', KEYS[1], 'publish_status')
      end
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
if restarted == '1' then
  -- A restart (force, a carousel's child, a lost job) writes this call's flags over the poll.
  local theirs = foreign(cur[10], cur[11])
  if theirs then
    return scope_refusal(theirs)
  end
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
  first = reserve_slot(KEYS[7], step, now, now)
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
-- No field reads as threads (what every poll before Instagram was): only another is stored.
put('platform', platform ~= 'threads' and platform or '')
put('publish', ARGV[11] == '1' and '1' or '')
put('webhook_url', ARGV[12])
put('intake_entry', ARGV[15])
put('reply_to', ARGV[16])
put('producer', producer ~= 'default' and producer or '')  -- who may restart it (see foreign)
-- The poll's trace (README "Tracing"): checked by every door already; here again, so that the
-- hash never holds anything but a version 00 traceparent (a value, never run or parsed further).
local traceparent = ARGV[26] or ''
if #traceparent == 55 and string.find(traceparent, '^00%-' .. string.rep('[0-9a-f]', 32) ..
    '%-' .. string.rep('[0-9a-f]', 16) .. '%-[0-9a-f][0-9a-f]$') then
  put('traceparent', traceparent)
end
if child then
  put('carousel_parent', ARGV[17])
  put('parent_generation', ARGV[18])
end
if parent then
  put('children', ARGV[19])
  put('children_pending', ARGV[20])
end
-- What an earlier poll of this container did with it: its publish_status, or, for a poll that
-- did not publish itself, the earlier_publish it carried from one before it.
local earlier = posted(cur[7]) and cur[7] or cur[12]
if posted(earlier) then
  local was = earlier == 'published' and 'published' or 'unconfirmed'
  if ARGV[11] == '1' then
    -- An earlier poll of this container published it, or may have: the new poll never
    -- publishes again. It reads the status until PUBLISHED (or ends PUBLISH_UNCONFIRMED).
    put('publish_status', was)
    put('publish_note', 'an earlier poll of this container published it (or may have)')
  else
    -- A poll that does not publish keeps the memory for a later one that does: a forced
    -- re-poll without publish in between must not let the next publish poll post again.
    put('earlier_publish', was)
  end
  put('media_id', cur[8] or '')
  put('published_at', cur[9] or '')
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], deadline / 1000, ARGV[1])
redis.call('SET', KEYS[8], ARGV[7], 'PX', ttl * 1000)
redis.call('ZADD', KEYS[3], first, job_id)
if account ~= '' then
  redis.call('ZADD', KEYS[4], now / 1000, account)
end
-- The platform rides on the enqueue entry when it is not the default (worker/core/history.py).
local story = {(restarted == '1' and 'q|r' or 'q') ..
  (platform ~= 'threads' and ((restarted == '1' and '|' or '||') .. platform) or '')}
if first > now and not parent then
  story[2] = 'w|' .. (first - now)
end
history(KEYS[9], ttl * 1000, now, story)
if restarted == '1' then
  return {'restarted', 'QUEUED'}
end
return {'enqueued', 'QUEUED'}
