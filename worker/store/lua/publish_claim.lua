#!lua
-- Claim the one publish call of a container's poll, if this run still owns the poll. Whatever
-- happens next, no other run can publish it unless the outcome is recorded as
-- certainly-not-published (publish_status back to pending).
-- The claim names its run (publish_claim): the same run claiming again (its first reply was
-- lost on the way back and the write was retried) gets the same answer, 'ok', rather than
-- finding its own claim in flight and giving the publish up as ambiguous.
-- KEYS: 1 result hash, 2 the job's lock, 3 the container's history (lib.lua, history).
-- ARGV: 1 run token, 2 generation, 3 max attempts
-- Returns 'ok', 'stale', 'exhausted', 'off' (the poll no longer publishes: it became a
-- carousel's child), or the publish_status that prevents the claim.
if not owns(KEYS[2], ARGV[1]) then
  return 'stale'
end
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final', 'publish_status',
  'publish_attempts', 'publish', 'publish_claim')
if cur[1] ~= ARGV[2] or cur[2] == '1' then
  return 'stale'
end
if cur[3] == 'in_flight' and cur[6] == ARGV[1] then
  return 'ok'
end
if cur[5] ~= '1' then
  return 'off'
end
if cur[3] ~= 'pending' then
  return cur[3] or ''
end
local attempts = (tonumber(cur[4] or '') or 0) + 1
if attempts > tonumber(ARGV[3]) then
  return 'exhausted'
end
local now = now_ms()
redis.call('HSET', KEYS[1], 'publish_status', 'in_flight', 'publish_attempts', tostring(attempts),
  'publish_claimed_at', stamp(now), 'publish_claim', ARGV[1])
history(KEYS[3], redis.call('PTTL', KEYS[1]), now, {'a|' .. attempts})
return 'ok'
