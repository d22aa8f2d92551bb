-- Everything a check needs before its API call, in one round trip: the container's hash, its
-- account's throttling/token state and, when the call will go ahead, a pacing slot.
-- KEYS: 1 result hash
-- ARGV: 1 generation, 2 key prefix, 3 seconds between requests (0: no pacing),
--       4 longest pacing wait the caller accepts
-- Returns {hash as a flat list, throttled_until, throttle_level, token_rejected_fp,
--          token_rejected_reason, pacing wait}
local h = redis.call('HGETALL', KEYS[1])
local acct_state = {'0', '0', '', ''}
local wait = '0'
local gen, final, account = nil, nil, nil
for i = 1, #h, 2 do
  if h[i] == 'generation' then gen = h[i + 1]
  elseif h[i] == 'final' then final = h[i + 1]
  elseif h[i] == 'account' then account = h[i + 1]
  end
end
if gen ~= ARGV[1] or final == '1' then
  return {h, acct_state[1], acct_state[2], acct_state[3], acct_state[4], wait}
end
if account == nil or account == '' then account = 'default' end
local a = redis.call('HMGET', ARGV[2] .. ':account:' .. account,
  'throttled_until', 'throttle_level', 'token_rejected_fp', 'token_rejected_reason')
for i = 1, 4 do
  if a[i] then acct_state[i] = a[i] end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local step = tonumber(ARGV[3])
if step > 0 and (tonumber(acct_state[1]) or 0) <= now then
  -- Same GCRA as rate.lua: reserve a slot unless the wait is longer than the caller accepts.
  local key = ARGV[2] .. ':rate:' .. account
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local w = tat - now
  if w <= tonumber(ARGV[4]) then
    redis.call('SET', key, tostring(tat + step), 'PX', math.ceil((w + step) * 1000) + 1000)
  end
  wait = tostring(w)
end
return {h, acct_state[1], acct_state[2], acct_state[3], acct_state[4], wait}
