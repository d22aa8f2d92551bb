#!lua
-- An account's token lifecycle (worker/store/accounts.py). Token-free: fingerprints and times.
-- KEYS: 1 account hash, 2 refresh lease, 3 fence counter
-- ARGV: 1 action, 2 ttl seconds (the account hash's), then per action:
--   sync:    3 fingerprint, 4 expires_at (s, '' unknown), 5 issued_at (s, '' unknown)
--            A new fingerprint starts the token's record (first seen now; what was learned of
--            the previous token is dropped) and clears a rejection of another token: the file
--            holds a new one. Returns {'ok', now ms, first seen (s), expires_at, issued_at,
--            failures, retry_at, rejected ('1'/'0')}, or {'stale'} for the token a refresh
--            just replaced (the caller's file is older than the write-back).
--   acquire: 3 owner, 4 lease ms, 5 fingerprint. The lease when free and the token is still
--            the one the caller would refresh: {'ok', fence, now ms}; {'moved'} (another token
--            is current: refreshed already), {'held'} (another worker holds the lease).
--   guard:   3 owner, 4 fence, 5 lease ms. Still the latest holder: extends the lease,
--            {'ok', now ms}; else {'fenced'}.
--   commit:  3 owner, 4 fence, 5 new fingerprint, 6 expires_at (s), 7 issued_at (s). Records the
--            refreshed token and frees the lease: {'ok'} or {'fenced'}.
--   fail:    3 owner, 4 fence, 5 reason, 6 back-off base s, 7 cap s, 8 '1' when the API
--            rejected the token (190), 9 its fingerprint, 10 its code.
--            {'ok', failures, retry_at ms} (or {'fenced'}).
local act = ARGV[1]
local ttl = tonumber(ARGV[2])
local now = now_ms()

local function holder()
  local v = redis.call('GET', KEYS[2])
  if not v then return nil, nil end
  local sep = string.find(v, '|', 1, true)
  return string.sub(v, 1, sep - 1), string.sub(v, sep + 1)
end

local function latest(owner, fence)
  local o, f = holder()
  return o == owner and f == fence and redis.call('GET', KEYS[3]) == fence
end

if act == 'sync' then
  local a = redis.call('HMGET', KEYS[1], 'token_fp', 'token_seen_at', 'token_rejected_fp',
    'token_expires_at', 'token_issued_at', 'token_refresh_failures', 'token_refresh_retry_at',
    'token_prev_fp')
  local seen = a[2]
  if a[1] ~= ARGV[3] and a[8] == ARGV[3] then
    -- The token a refresh just replaced: this worker has not read the new file yet.
    return {'stale'}
  end
  if a[1] ~= ARGV[3] then
    seen = stamp(now)
    redis.call('HSET', KEYS[1], 'token_fp', ARGV[3], 'token_seen_at', seen)
    redis.call('HDEL', KEYS[1], 'token_expires_at', 'token_issued_at', 'token_refresh_failures',
      'token_refresh_retry_at', 'token_refresh_error')
    a[4], a[5], a[6], a[7] = false, false, false, false
  end
  -- What the file says wins; a refresh's answer stands until the file says otherwise.
  if ARGV[4] ~= '' then a[4] = ARGV[4] end
  if ARGV[5] ~= '' then a[5] = ARGV[5] end
  if a[4] then redis.call('HSET', KEYS[1], 'token_expires_at', a[4]) end
  if a[5] then redis.call('HSET', KEYS[1], 'token_issued_at', a[5]) end
  local rejected = '0'
  if a[3] then
    if a[3] == ARGV[3] then
      rejected = '1'
    else
      redis.call('HDEL', KEYS[1], 'token_rejected_fp', 'token_rejected_reason',
        'token_rejected_code', 'token_rejected_at')
    end
  end
  redis.call('EXPIRE', KEYS[1], ttl)
  return {'ok', now, seen or '', a[4] or '', a[5] or '', a[6] or '0', a[7] or '0', rejected}
elseif act == 'acquire' then
  if redis.call('HGET', KEYS[1], 'token_fp') ~= ARGV[5] then
    return {'moved'}
  end
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return {'held'}
  end
  local fence = tostring(redis.call('INCR', KEYS[3]))
  redis.call('SET', KEYS[2], ARGV[3] .. '|' .. fence, 'NX', 'PX', ARGV[4])
  redis.call('EXPIRE', KEYS[3], ttl)
  return {'ok', fence, now}
elseif act == 'guard' then
  if not latest(ARGV[3], ARGV[4]) then
    return {'fenced'}
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return {'ok', now}
elseif act == 'commit' then
  if not latest(ARGV[3], ARGV[4]) then
    return {'fenced'}
  end
  local old = redis.call('HGET', KEYS[1], 'token_fp')
  redis.call('HSET', KEYS[1], 'token_fp', ARGV[5], 'token_prev_fp', old or '',
    'token_seen_at', stamp(now),
    'token_expires_at', ARGV[6], 'token_issued_at', ARGV[7], 'token_refreshed_at', stamp(now),
    'token_refresh_failures', 0)
  redis.call('HDEL', KEYS[1], 'token_refresh_retry_at', 'token_refresh_error')
  redis.call('HINCRBY', KEYS[1], 'token_refreshes', 1)
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ttl)
  return {'ok'}
elseif act == 'fail' then
  if not latest(ARGV[3], ARGV[4]) then
    return {'fenced'}
  end
  local n = redis.call('HINCRBY', KEYS[1], 'token_refresh_failures', 1)
  local delay = tonumber(ARGV[6]) * (2 ^ math.min(n - 1, 30))
  if delay > tonumber(ARGV[7]) then delay = tonumber(ARGV[7]) end
  local retry = now + math.floor(delay * 1000)
  redis.call('HSET', KEYS[1], 'token_refresh_retry_at', stamp(retry),
    'token_refresh_error', ARGV[5], 'token_refresh_failed_at', stamp(now))
  if ARGV[8] == '1' then
    redis.call('HSET', KEYS[1], 'token_rejected_fp', ARGV[9], 'token_rejected_reason', ARGV[5],
      'token_rejected_code', ARGV[10], 'token_rejected_at', stamp(now))
  end
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ttl)
  return {'ok', n, retry}
end
return redis.error_reply('token.lua: unknown action')
