#!lua
-- Claim due jobs for one worker, in one round trip (worker/store/queue.py, JobQueue.claim).
-- KEYS: 1 queue (zset: job id -> due ms), 2 the other queue (the checks' or the deliveries'),
--       then the keys of the jobs the caller expects to find due (its candidates: the ids the
--       last claim's reply named): per job its lock, tries and data, and for a poll's check its
--       result hash and its account's hash (the account the caller expects)
-- ARGV: 1 one JSON object, its named arguments (worker/store/script_args.py, ClaimArgs: every
--       value a string): limit (most jobs to claim), lease_ms, worker (its name), job_prefix /
--       lock_prefix / tries_prefix (of a job's data, lock and tries keys: Keys), check_prefix
--       ("<prefix>:check:"), result_prefix ("<prefix>:result:"), job_ttl_ms, webhook_prefix
--       ("<prefix>:webhook:"), queue (which queue KEYS[1] is: 'checks' or 'deliveries'),
--       candidates (how many the reply names: the next claim's keys), candidates_when_left (how
--       many when due jobs were left for want of their keys), account_prefix
--       ("<prefix>:account:");
--       2.. ids of candidates whose keys cannot be declared (parked)
-- Each claimed job gets a lock holding a fresh run token "<worker>/<try>" for the lease, and its
-- score moves to the lease's end: a run that dies or stalls is due again when its lease ends, and
-- every later write of that run is refused (it no longer holds the token). A check job's reply
-- also carries its poll's hash (runs counted) and its account's state, so a check needs no read
-- of its own (the account's name instead when its hash was not among KEYS: the caller reads it).
-- A due job whose keys are not among KEYS is left as it is (every key a script touches is
-- declared, lib.lua): the reply says so, and names it among the candidates, so the caller's next
-- claim, at once, brings its keys.
-- A due job of the other queue (a delivery in the checks' queue: put there by a release before
-- the deliveries had a queue of their own; anything but a delivery in the deliveries' queue) is
-- not claimed: it is handed over to its own queue, due as it was, with no lock taken and no try
-- counted, so that the checks' claim never returns a delivery and vice versa. One held by a run
-- (a lock) stays until its lease ends, like any held job.
-- Returns {now ms, next due ms or '', candidates (the first ids by due time), how many due jobs
-- were left for want of their keys, then per job: id, token, data, try, hash (flat), account}
local args = cjson.decode(ARGV[1])
local now = now_ms()
local limit = tonumber(args.limit)
local lease = tonumber(args.lease_ms)
local check_prefix = args.check_prefix
local hook_prefix = args.webhook_prefix
local deliveries = args.queue == 'deliveries'
-- At most this many jobs handed over per claim (an upgrade may find a long backlog): the claim
-- stays a short script, and the next claim goes on at once (the reply says a job is due now).
local most_handed = 1000
local out = {now, '', {}, 0}
local claimed, handed, skipped = 0, 0, 0

local function elsewhere(job_id)
  return (string.sub(job_id, 1, #hook_prefix) == hook_prefix) ~= deliveries
end

local function hand_over(job_id)
  local due = redis.call('ZSCORE', KEYS[1], job_id)
  local there = redis.call('ZSCORE', KEYS[2], job_id)
  if not there or tonumber(there) > tonumber(due) then
    redis.call('ZADD', KEYS[2], due, job_id)
  end
  redis.call('ZREM', KEYS[1], job_id)
  handed = handed + 1
end

-- A poll's check job's result hash ("<prefix>:check:<id>:<generation>"), else nil.
local function check_key(job_id)
  if string.sub(job_id, 1, #check_prefix) ~= check_prefix then
    return nil
  end
  local cid = string.match(string.sub(job_id, #check_prefix + 1), '^(.*):[^:]*$')
  return cid and (args.result_prefix .. cid) or nil
end

local function claim(job_id)
  local tries = args.tries_prefix .. job_id
  local try = redis.call('INCR', tries)
  redis.call('PEXPIRE', tries, args.job_ttl_ms)
  local token = args.worker .. '/' .. try
  redis.call('SET', args.lock_prefix .. job_id, token, 'PX', lease)
  redis.call('ZADD', KEYS[1], 'XX', now + lease, job_id)
  local state, account = false, false
  local rkey = check_key(job_id)
  if rkey then
    local gen = string.match(job_id, ':([^:]*)$')
    if redis.call('HGET', rkey, 'generation') == gen then
      redis.call('HINCRBY', rkey, 'runs', 1)
      state = redis.call('HGETALL', rkey)
      local name = redis.call('HGET', rkey, 'account')
      if not name or name == '' then name = 'default' end
      local akey = args.account_prefix .. name
      if declared[akey] then
        account = redis.call('HMGET', akey, 'throttled_until', 'throttle_level',
          'token_rejected_fp', 'token_rejected_reason')
      else
        account = name
      end
    end
  end
  out[#out + 1] = job_id
  out[#out + 1] = token
  out[#out + 1] = redis.call('GET', args.job_prefix .. job_id)
  out[#out + 1] = try
  out[#out + 1] = state
  out[#out + 1] = account
  claimed = claimed + 1
end

-- Whether the caller declared what a claim of job_id touches (lib.lua: every key declared):
-- its lock only for a job of the other queue (handed over, or left while it is held).
local function brought(job_id)
  if not declared[args.lock_prefix .. job_id] then
    return false
  end
  if elsewhere(job_id) then
    return true
  end
  if not (declared[args.tries_prefix .. job_id] and declared[args.job_prefix .. job_id]) then
    return false
  end
  local rkey = check_key(job_id)
  return not rkey or declared[rkey] == true
end

-- Jobs whose keys the caller cannot declare (in cluster mode, an id without the deployment's
-- hash tag: its keys are in another slot): never claimable here, they would be left due at the
-- front for ever. Parked an hour ahead instead, each time one is due (the worker says so).
local parked = 60 * 60 * 1000
for i = 2, #ARGV do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due and tonumber(due) <= now then
    redis.call('ZADD', KEYS[1], 'XX', now + parked, ARGV[i])
  end
end

local exhausted = false
while true do
  local want = limit - claimed
  local before = handed
  -- Past the due jobs left for want of their keys: those stay due, at the front.
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', skipped, want)
  exhausted = #ids < want
  for _, job_id in ipairs(ids) do
    if not brought(job_id) then
      skipped = skipped + 1
    else
      local left = redis.call('PTTL', args.lock_prefix .. job_id)
      if left > 0 then
        -- Held (its score was moved by hand, or the lease outlives the score): due when it ends.
        redis.call('ZADD', KEYS[1], 'XX', now + left, job_id)
      elseif elsewhere(job_id) then
        hand_over(job_id)
      else
        claim(job_id)
      end
    end
  end
  -- Jobs handed over left room in this claim: look again, while more are due.
  if exhausted or handed == before or claimed >= limit or handed >= most_handed then
    break
  end
end
if skipped > 0 then
  out[2] = now
elseif exhausted then
  local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #nxt > 0 then
    out[2] = nxt[2]
  end
elseif claimed == 0 and handed >= most_handed then
  out[2] = now
end
-- The next claim's candidates: the jobs due first (those left for want of their keys first);
-- more of them when some were left (a backlog to hand over: the caller declares only the lock
-- of those, and the full keys of as many as it may claim).
local candidates = tonumber(skipped > 0 and args.candidates_when_left or args.candidates)
out[3] = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'LIMIT', 0, candidates)
out[4] = skipped
return out
