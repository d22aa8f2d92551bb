#!lua
-- Claim due jobs for one worker, in one round trip (worker/store/queue.py, JobQueue.claim).
-- KEYS: 1 queue (zset: job id -> due ms), 2 the other queue (the checks' or the deliveries')
-- ARGV: 1 most jobs to claim, 2 lease ms, 3 worker name, 4 job key prefix, 5 lock prefix,
--       6 tries prefix, 7 check job id prefix ("<prefix>:check:"), 8 key prefix, 9 job ttl ms,
--       10 delivery job id prefix ("<prefix>:webhook:"), 11 which queue KEYS[1] is: 'checks'
--       or 'deliveries'
-- Each claimed job gets a lock holding a fresh run token "<worker>/<try>" for the lease, and its
-- score moves to the lease's end: a run that dies or stalls is due again when its lease ends, and
-- every later write of that run is refused (it no longer holds the token). A check job's reply
-- also carries its poll's hash (runs counted) and its account's state, so a check needs no read
-- of its own.
-- A due job of the other queue (a delivery in the checks' queue: put there by a release before
-- the deliveries had a queue of their own; anything but a delivery in the deliveries' queue) is
-- not claimed: it is handed over to its own queue, due as it was, with no lock taken and no try
-- counted, so that the checks' claim never returns a delivery and vice versa. One held by a run
-- (a lock) stays until its lease ends, like any held job.
-- Returns {now ms, next due ms or '', then per job: id, token, data, try, hash (flat), account}
local now = now_ms()
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local check_prefix = ARGV[7]
local hook_prefix = ARGV[10]
local deliveries = ARGV[11] == 'deliveries'
-- At most this many jobs handed over per claim (an upgrade may find a long backlog): the claim
-- stays a short script, and the next claim goes on at once (the reply says a job is due now).
local most_handed = 1000
local out = {now, ''}
local claimed, handed = 0, 0

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

local function claim(job_id)
  local tries = ARGV[6] .. job_id
  local try = redis.call('INCR', tries)
  redis.call('PEXPIRE', tries, ARGV[9])
  local token = ARGV[3] .. '/' .. try
  redis.call('SET', ARGV[5] .. job_id, token, 'PX', lease)
  redis.call('ZADD', KEYS[1], 'XX', now + lease, job_id)
  local state, account = false, false
  if string.sub(job_id, 1, #check_prefix) == check_prefix then
    local cid, gen = string.match(string.sub(job_id, #check_prefix + 1), '^(.*):([^:]*)$')
    if cid ~= nil then
      local rkey = ARGV[8] .. ':result:' .. cid
      if redis.call('HGET', rkey, 'generation') == gen then
        redis.call('HINCRBY', rkey, 'runs', 1)
        state = redis.call('HGETALL', rkey)
        local name = redis.call('HGET', rkey, 'account')
        if not name or name == '' then name = 'default' end
        account = redis.call('HMGET', ARGV[8] .. ':account:' .. name, 'throttled_until',
          'throttle_level', 'token_rejected_fp', 'token_rejected_reason')
      end
    end
  end
  out[#out + 1] = job_id
  out[#out + 1] = token
  out[#out + 1] = redis.call('GET', ARGV[4] .. job_id)
  out[#out + 1] = try
  out[#out + 1] = state
  out[#out + 1] = account
  claimed = claimed + 1
end

local exhausted = false
while true do
  local want = limit - claimed
  local before = handed
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, want)
  exhausted = #ids < want
  for _, job_id in ipairs(ids) do
    local left = redis.call('PTTL', ARGV[5] .. job_id)
    if left > 0 then
      -- Held (its score was moved by hand, or the lease outlives the score): due when it ends.
      redis.call('ZADD', KEYS[1], 'XX', now + left, job_id)
    elseif elsewhere(job_id) then
      hand_over(job_id)
    else
      claim(job_id)
    end
  end
  -- Jobs handed over left room in this claim: look again, while more are due.
  if exhausted or handed == before or claimed >= limit or handed >= most_handed then
    break
  end
end
if exhausted then
  local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #nxt > 0 then
    out[2] = nxt[2]
  end
elseif claimed == 0 and handed >= most_handed then
  out[2] = now
end
return out
