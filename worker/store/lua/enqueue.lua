#!lua
-- Record a container and schedule its first check, atomically, on Redis' clock. The hash gets
-- only the fields that say something at this point; every other field is added by the first
-- write that has a value for it, and readers take a missing field as empty / 0 / false.
-- A carousel is one call for its parent (args.children), then one per child (args.parent_id,
-- args.parent_generation: the parent and the parent's new generation), in one MULTI: a child is
-- touched only if its parent's poll was (re)started by this very call.
-- KEYS: 1 result hash, 2 inflight zset, 3 queue, 4 accounts zset, 5 the deployment's config hash,
--       6 a carousel child's parent's result hash (else KEYS[1] again), 7 the account's pacing
--       calendar (lib.lua, reserve_slot), 8 the new check job's data key, 9 the container's
--       history (lib.lua, history), then a carousel parent's children's result hashes; a hash
--       the script learns of as it reads (a container's live carousel) is asked for (lib.lua,
--       need)
-- ARGV: 1 one JSON object, its named arguments (worker/store/script_args.py, EnqueueArgs: every
--       value a string): container_id, window_ms, ttl_seconds, generation, job_id_base
--       ("<prefix>:check:<id>:"), account, force / publish ('1'/'0'), webhook_url,
--       pace_step_ms (0: none), intake_entry ('' when not from the intake), reply_to ('' for
--       none), parent_id / parent_generation (a carousel child; ''), children ("A,B,...": a
--       carousel parent; ''), children_count, producer ('default' for the implicit one),
--       producer_force / producer_publish / producer_webhook (whether that producer may force /
--       publish / give a webhook url: '1'/'0'), producer_accounts (the accounts it may use:
--       '*', or ',id,id,'): its scope (config/producers.py), enforced here, in the same step as
--       the write, so that no check-then-write race lets a request past it; traceparent (the
--       poll's W3C traceparent, '' for none; stored only when it is one, as data), platform
--       ('threads' / 'instagram': api_client.platforms; a live poll of the same id on another
--       platform is refused), result_prefix ("<prefix>:result:", Keys: a hash this script
--       learns of as it reads);
--       2 the new check job's data (bytes: beside the table, which JSON could not carry)
-- Returns {outcome, status, reason}: enqueued / restarted / duplicate / final / refused (a
-- carousel's rule, with the reason) (/ skipped: a child of a carousel that was not started);
-- a refusal by the producer's scope is {'refused', status, reason, 'scope'}.
local args = cjson.decode(ARGV[1])
local child = args.parent_id ~= ''
if child and redis.call('HGET', KEYS[6], 'generation') ~= args.parent_generation then
  return {'skipped', ''}
end
local cur = redis.call('HMGET', KEYS[1], 'final', 'generation', 'status', 'intake_entry',
  'carousel_parent', 'parent_generation', 'publish_status', 'media_id', 'published_at',
  'producer', 'account', 'earlier_publish')
local results = args.result_prefix  -- "<prefix>:result:" (Keys)

-- Producers' scopes (issue 21). A request outside its producer's scope is refused before
-- anything is written, whatever door it came through (the doors check it too, to say so early).
local producer = args.producer
local function may_use(account)
  -- '' (no account: the deployment's own token) is in no list: only '*' allows it.
  return args.producer_accounts == '*' or (account ~= '' and
    string.find(args.producer_accounts, ',' .. account .. ',', 1, true) ~= nil)
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
  if owner == producer or (args.producer_force == '1' and may_use(account or '')) then
    return nil
  end
  return 'change a poll that producer ' .. owner .. ' started (that takes force and its ' ..
    'account ' .. ((account or '') ~= '' and account or '(none)') .. ')'
end
if not may_use(args.account) then
  return scope_refusal(args.account == '' and 'poll without an account' or
    'use account ' .. args.account)
end
if args.force == '1' and args.producer_force ~= '1' then
  return scope_refusal('force')
end
if args.publish == '1' and args.producer_publish ~= '1' then
  return scope_refusal('publish')
end
if args.webhook_url ~= '' and args.producer_webhook ~= '1' then
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

if args.children ~= '' then
  -- A carousel's rules, checked before anything is written: a container belongs to at most one
  -- live carousel, is not a carousel itself, and is not published (or publishing) on its own.
  for c in string.gmatch(args.children, '[^,]+') do
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
    if other ~= '' and other ~= args.container_id then
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
if not child and args.children == '' and (args.force == '1' or args.publish == '1') then
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
if args.intake_entry ~= '' and cur[4] == args.intake_entry then
  -- The same intake entry again (a consumer died between this enqueue and its XACK): it
  -- started this poll already, force or not.
  return {'duplicate', cur[3] or ''}
end
local platform = args.platform or ''
if platform == '' then
  platform = 'threads'
end
local restarted = '0'
if cur[1] == '0' then
  -- Its job is live while it is in the queue (every path that ends a job takes it out; a
  -- claim, a record, a release keep it in): the queue is declared, the job's keys need not be.
  local old_job = args.job_id_base .. (cur[2] or '')
  if redis.call('ZSCORE', KEYS[3], old_job) then
    -- (Read here only: a live duplicate is the one path that needs it.)
    local polled_on = redis.call('HGET', KEYS[1], 'platform') or 'threads'
    if polled_on ~= platform then
      -- One id, two platforms: the live poll asks its own platform; this request would be
      -- answered about another container, so it is refused, not folded in as a duplicate.
      return {'refused', cur[3] or '', 'container ' .. args.container_id ..
        ' is being polled on ' .. polled_on .. ', not ' .. platform}
    end
    if child then
      -- Already being polled: its final record will report to this carousel (no second poll),
      -- and it is no longer published on its own (the carousel is; publish_claim.lua refuses a
      -- poll without 'publish', and the parent refused one whose publish had started).
      redis.call('HSET', KEYS[1], 'carousel_parent', args.parent_id, 'parent_generation',
        args.parent_generation)
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
  if args.force ~= '1' and not child then
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
local deadline = now + tonumber(args.window_ms)
local account = args.account
-- The workers' pacing rate rules (they publish it at start, KEYS[5]); the producer's own
-- setting is only the fallback before any worker has run.
local step = tonumber(redis.call('HGET', KEYS[5], 'pace_step_ms') or args.pace_step_ms)
local parent = args.children ~= ''
local first
if parent then
  -- A carousel's parent is not checked before its children are FINISHED: its job waits for the
  -- last child's record (record.lua makes it due), or, as a safety net, the window's end.
  first = deadline
else
  first = reserve_slot(KEYS[7], step, now, now)
end
local job_id = args.job_id_base .. args.generation
local ttl = tonumber(args.ttl_seconds)
redis.call('DEL', KEYS[1])
local fields = {'container_id', args.container_id, 'status', 'QUEUED', 'final', '0',
  'enqueued_at', stamp(now), 'deadline_at', stamp(deadline), 'generation', args.generation,
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
put('publish', args.publish == '1' and '1' or '')
put('webhook_url', args.webhook_url)
put('intake_entry', args.intake_entry)
put('reply_to', args.reply_to)
put('producer', producer ~= 'default' and producer or '')  -- who may restart it (see foreign)
-- The poll's trace (README "Tracing"): checked by every door already; here again, so that the
-- hash never holds anything but a version 00 traceparent (a value, never run or parsed further).
local traceparent = args.traceparent or ''
if #traceparent == 55 and string.find(traceparent, '^00%-' .. string.rep('[0-9a-f]', 32) ..
    '%-' .. string.rep('[0-9a-f]', 16) .. '%-[0-9a-f][0-9a-f]$') then
  put('traceparent', traceparent)
end
if child then
  put('carousel_parent', args.parent_id)
  put('parent_generation', args.parent_generation)
end
if parent then
  put('children', args.children)
  put('children_pending', args.children_count)
end
-- What an earlier poll of this container did with it: its publish_status, or, for a poll that
-- did not publish itself, the earlier_publish it carried from one before it.
local earlier = posted(cur[7]) and cur[7] or cur[12]
if posted(earlier) then
  local was = earlier == 'published' and 'published' or 'unconfirmed'
  if args.publish == '1' then
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
redis.call('ZADD', KEYS[2], deadline / 1000, args.container_id)
redis.call('SET', KEYS[8], ARGV[2], 'PX', ttl * 1000)
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
