-- Shared by every script: the loader (worker/store/scripts.py) puts this file after each script's
-- first line (its "#!lua" shebang, which makes Redis refuse a writing script up front when it is
-- over maxmemory, instead of failing half-way through it).

-- Every key a script touches is one of its KEYS: Redis' rule for scripts, which cluster mode
-- enforces through the keys' slot and Dragonfly by default. A key a script learns of only as it
-- reads (a carousel's parent named in a hash, the minute's stats hash on Redis' clock) is asked
-- for: the script returns need(key) before it has written anything, and the caller
-- (worker/store/scripts.py, `call`) runs it again with that key after its KEYS. tests/integration/
-- test_declared_keys.py watches every command the scripts run (MONITOR) and holds them to it.
local declared = {}
for _, k in ipairs(KEYS) do
  declared[k] = true
end
local function need(key)
  return {'need-key', key}
end

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
-- most the rate's requests, plus one at its edges).
-- The calendar is one sorted set, <rate>: the taken slots as runs [start, end), a member per
-- run, the member its start and the score its end. Runs never overlap and never touch (a
-- reservation merges its slot with the runs on either side), so the first free slot at or after
-- i is i itself or the end of the one run holding i: a reservation costs a few O(log n) lookups
-- however many slots a burst took (walking over taken slots one by one made a burst O(n^2)).
-- Checks booked for later (the next check, a throttle pause's end) leave the free slots before
-- them free for others. Runs that ended a minute ago are dropped two at a time (each
-- reservation adds at most one run), and the key expires a minute after its latest slot.
-- Only commands the scripts already used (ZRANGEBYSCORE, ZADD, ZREM): an ACL user of an
-- earlier version needs no new rule.
local function reserve_slot(rate, step, want, now)
  if step <= 0 then
    return want
  end
  -- The slot that holds `want`: a free one is taken at `want` itself (no rounding up).
  local i = math.floor(want / step)
  local j, from, to = i, i, i + 1
  local next_run
  -- The first run that ends after i: it holds i, or it is the first run after i.
  local after = redis.call('ZRANGEBYSCORE', rate, '(' .. i, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #after > 0 and tonumber(after[1]) <= i then
    -- i is taken: the run's end is free (runs never touch). The new slot extends that run.
    j = tonumber(after[2])
    from, to = tonumber(after[1]), j + 1
    next_run = redis.call('ZRANGEBYSCORE', rate, '(' .. j, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  else
    next_run = after
    -- A run that ends right at i: the new slot extends it.
    local before = redis.call('ZRANGEBYSCORE', rate, i, i, 'LIMIT', 0, 1)
    if #before > 0 then
      from = tonumber(before[1])
    end
  end
  if #next_run > 0 and tonumber(next_run[1]) == j + 1 then
    -- The run after starts right after the new slot: one run now.
    to = tonumber(next_run[2])
    redis.call('ZREM', rate, next_run[1])
  end
  -- Members are written with %d only, so a run's start always reads back as the same string.
  redis.call('ZADD', rate, to, string.format('%d', from))
  local past = redis.call('ZRANGEBYSCORE', rate, '-inf', math.floor((now - 60000) / step),
    'LIMIT', 0, 2)
  if #past > 0 then
    redis.call('ZREM', rate, unpack(past))
  end
  local at = j * step
  local keep = math.max(at - now, 0) + 60000
  if redis.call('PTTL', rate) < keep then
    redis.call('PEXPIRE', rate, keep)
  end
  return math.max(at, want)
end

-- A container's history (worker/core/history.py; README, "History"): one string at <history>,
-- entries oldest first separated by newlines, each its kind's letter, Redis' time in ms in base
-- 36, then its fields ("<kind>|fields" as given, the time put after the kind). The newest
-- entries that fit in HISTORY_MAX_BYTES are kept, whole. The key expires in pttl ms: with the
-- poll's result hash (each writer passes the TTL it gives the hash, or reads the hash's own).
-- GET and SET only (a string, not a list): commands the scripts already used, so a worker's
-- ACL user of an earlier version needs no new rule, and SET stores the exact size (APPEND
-- over-allocates by up to twice the length).
local HISTORY_MAX_BYTES = 1024
-- Statuses as the history stores them (worker/core/history.py, STATUS_CODES).
local HISTORY_STATUS = {IN_PROGRESS = 'P', FINISHED = 'F', PUBLISHED = 'U', ERROR = 'E',
  EXPIRED = 'X', TIMED_OUT = 'T', CANCELLED = 'C'}
local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  local s = ''
  repeat
    local d = n % 36
    s = string.sub(B36, d + 1, d + 1) .. s
    n = (n - d) / 36
  until n == 0
  return s
end
local function history(key, pttl, now, entries)
  if #entries == 0 or pttl <= 0 then
    return
  end
  local t = b36(now)
  local add = {}
  for i, e in ipairs(entries) do
    add[i] = string.sub(e, 1, 1) .. t .. string.sub(e, 2)
  end
  local text = table.concat(add, '\n')
  local old = redis.call('GET', key)
  if old then
    text = old .. '\n' .. text
  end
  if #text > HISTORY_MAX_BYTES then
    local cut = string.find(text, '\n', #text - HISTORY_MAX_BYTES, true)
    text = cut and string.sub(text, cut + 1) or ''
  end
  redis.call('SET', key, text, 'PX', pttl)
end
