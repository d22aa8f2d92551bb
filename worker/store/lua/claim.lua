#!lua
-- Claim due jobs for one worker, in one round trip (worker/store/queue.py, JobQueue.claim).
-- KEYS: 1 queue (zset: job id -> due ms)
-- ARGV: 1 most jobs to claim, 2 lease ms, 3 worker name, 4 job key prefix, 5 lock prefix,
--       6 tries prefix, 7 check job id prefix ("<prefix>:check:"), 8 key prefix, 9 job ttl ms
-- Each claimed job gets a lock holding a fresh run token "<worker>/<try>" for the lease, and its
-- score moves to the lease's end: a run that dies or stalls is due again when its lease ends, and
-- every later write of that run is refused (it no longer holds the token). A check job's reply
-- also carries its poll's hash (runs counted) and its account's state, so a check needs no read
-- of its own.
-- Returns {now ms, next due ms or '', then per job: id, token, data, try, hash (flat), account}
local now = now_ms()
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local check_prefix = ARGV[7]
local out = {now, ''}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, job_id in ipairs(ids) do
  local lock = ARGV[5] .. job_id
  local left = redis.call('PTTL', lock)
  if left > 0 then
    -- Held (its score was moved by hand, or the lease outlives the score): due when it ends.
    redis.call('ZADD', KEYS[1], 'XX', now + left, job_id)
  else
    local tries = ARGV[6] .. job_id
    local try = redis.call('INCR', tries)
    redis.call('PEXPIRE', tries, ARGV[9])
    local token = ARGV[3] .. '/' .. try
    redis.call('SET', lock, token, 'PX', lease)
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
  end
end
if #ids < limit then
  local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #nxt > 0 then
    out[2] = nxt[2]
  end
end
return out
