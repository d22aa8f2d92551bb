#!lua
-- Claim the one publish call of a container's poll, if this run still owns the poll. Whatever
-- happens next, no other run can publish it unless the outcome is recorded as
-- certainly-not-published (publish_status back to pending).
-- KEYS: 1 result hash, 2 the job's lock. ARGV: 1 run token, 2 generation, 3 max attempts
-- Returns 'ok', 'stale', 'exhausted', or the publish_status that prevents the claim.
if not owns(KEYS[2], ARGV[1]) then
  return 'stale'
end
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final', 'publish_status', 'publish_attempts')
if cur[1] ~= ARGV[2] or cur[2] == '1' then
  return 'stale'
end
if cur[3] ~= 'pending' then
  return cur[3] or ''
end
local attempts = (tonumber(cur[4] or '') or 0) + 1
if attempts > tonumber(ARGV[3]) then
  return 'exhausted'
end
redis.call('HSET', KEYS[1], 'publish_status', 'in_flight', 'publish_attempts', tostring(attempts),
  'publish_claimed_at', stamp(now_ms()))
return 'ok'
