-- Per-account request pacing (GCRA), shared by every worker; Redis' clock, not the workers'.
-- KEYS: 1 pacing key. ARGV: 1 seconds between requests, 2 longest wait the caller accepts.
-- Returns the wait in seconds as a string: "0" means go now. When the wait would exceed what
-- the caller accepts, no slot is reserved (the caller comes back later instead of queueing).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local step = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then
  return tostring(wait)
end
redis.call('SET', KEYS[1], tostring(tat + step), 'PX', math.ceil((wait + step) * 1000) + 1000)
return tostring(wait)
