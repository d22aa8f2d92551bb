-- Shared by every script: the loader (worker/store/scripts.py) puts this file after each script's
-- first line (its "#!lua" shebang, which makes Redis refuse a writing script up front when it is
-- over maxmemory, instead of failing half-way through it).

-- Redis' own clock, in ms: every time that decides the schedule comes from here.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A time as stored in a result hash: Unix seconds to the millisecond ("1795438388.610").
local function stamp(ms)
  return string.format('%d.%03d', math.floor(ms / 1000), ms % 1000)
end

-- A run owns its job while the job's lock holds the run's token (set by claim.lua).
local function owns(lock_key, token)
  return redis.call('GET', lock_key) == token
end

-- Reserve an account's first free pacing slot at or after want (ms); returns the time to run:
-- want itself when its own slot is free, else the start of the first free slot after it.
-- Slot i covers [i * step, (i + 1) * step) ms and takes one request (so any second holds at
-- most the rate's requests, plus one at its edges); a taken slot is a key
-- "<rate>:<i>" that expires a minute after its time. The hash <rate> remembers one run of taken
-- slots [from, to), so a burst of N reservations costs O(N), not O(N^2), while checks scheduled
-- for later (the next check, a throttle pause's end) still find the free slots before them.
local function reserve_slot(rate, step, want, now)
  if step <= 0 then
    return want
  end
  -- The slot that holds `want`: a free one is taken at `want` itself (no rounding up).
  local i = math.floor(want / step)
  local run = redis.call('HMGET', rate, 'from', 'to')
  local from, to = tonumber(run[1]), tonumber(run[2])
  local in_run = from ~= nil and to ~= nil and i >= from and i < to
  if in_run then
    i = to
  end
  local start = i
  local guard = 0
  while redis.call('EXISTS', rate .. ':' .. i) == 1 and guard < 1000000 do
    i = i + 1
    guard = guard + 1
  end
  local at = i * step
  local keep = math.max(at - now, 0) + 60000
  redis.call('SET', rate .. ':' .. i, '1', 'PX', keep)
  if in_run then
    -- Every slot from the old end to i was taken (we walked over them): the run grows.
    redis.call('HSET', rate, 'to', i + 1)
  elseif to == nil or to * step < now then
    redis.call('HSET', rate, 'from', start, 'to', i + 1)
  end
  if redis.call('PTTL', rate) < keep then
    redis.call('PEXPIRE', rate, keep)
  end
  return math.max(at, want)
end
