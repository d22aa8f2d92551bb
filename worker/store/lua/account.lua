#!lua
-- What one answer says about its account, written only if the run still owns its job.
-- KEYS: 1 account hash, 2 the job's lock
-- ARGV: 1 run token, 2 action ('throttle', 'clear', 'reject'), 3 request sent at (ms, Redis
--       time), 4 ttl seconds, then per action:
--   throttle: 5 base seconds, 6 max seconds, 7 at least until (ms, from usage headers, or 0),
--             8 graph code
--   reject:   5 token fingerprint, 6 reason, 7 code
-- One episode of throttling is one step of back-off: only an answer to a request sent after the
-- account's last pause ended raises the level; the answers to requests that were already in
-- flight when the pause began (a dozen concurrent code-4s) keep the pause as it is. Likewise
-- only a good answer to a request sent after the pause ended clears it.
-- Returns {'ok', paused until (ms, 0: not paused), level, first ('1' when this call made the
-- change: a new step, a newly rejected token)} or {'stale'}.
if not owns(KEYS[2], ARGV[1]) then
  return {'stale'}
end
local now = now_ms()
local sent = tonumber(ARGV[3])
local a = redis.call('HMGET', KEYS[1], 'throttled_until', 'throttle_level', 'token_rejected_fp')
local untl = math.floor((tonumber(a[1] or '') or 0) * 1000 + 0.5)
local level = tonumber(a[2] or '') or 0
local first = '0'
if ARGV[2] == 'throttle' then
  if sent >= untl then
    level = level + 1
    local delay = tonumber(ARGV[5]) * (2 ^ (level - 1))
    if delay > tonumber(ARGV[6]) then delay = tonumber(ARGV[6]) end
    untl = math.max(untl, now + math.floor(delay * 1000))
    first = '1'
    redis.call('HSET', KEYS[1], 'throttle_level', level, 'last_throttle_code', ARGV[8],
      'last_throttled_at', stamp(now))
    redis.call('HINCRBY', KEYS[1], 'throttled_total', 1)
    if level == 1 then
      -- An episode starts (it ends with the good answer that clears it): how long an account
      -- has been throttled is now - throttled_since.
      redis.call('HSET', KEYS[1], 'throttled_since', stamp(now))
    end
  end
  untl = math.max(untl, tonumber(ARGV[7]))
  redis.call('HSET', KEYS[1], 'throttled_until', stamp(untl))
elseif ARGV[2] == 'clear' then
  if level > 0 and sent >= untl then
    redis.call('HSET', KEYS[1], 'throttle_level', 0, 'throttled_until', '0')
    redis.call('HDEL', KEYS[1], 'throttled_since')
    level, untl, first = 0, 0, '1'
  end
elseif ARGV[2] == 'reject' then
  if a[3] ~= ARGV[5] then
    first = '1'
  end
  redis.call('HSET', KEYS[1], 'token_rejected_fp', ARGV[5], 'token_rejected_reason', ARGV[6],
    'token_rejected_code', ARGV[7], 'token_rejected_at', stamp(now))
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'ok', untl, level, first}
