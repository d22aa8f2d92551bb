-- Claim the one publish call of a container's poll. Whatever happens next, no other run can
-- publish it unless the outcome is recorded as certainly-not-published (status back to pending).
-- KEYS: 1 result hash. ARGV: 1 generation, 2 now, 3 max attempts
-- Returns 'ok', 'stale', 'exhausted', or the publish_status that prevents the claim.
local cur = redis.call('HMGET', KEYS[1], 'generation', 'final', 'publish_status', 'publish_attempts')
if cur[1] ~= ARGV[1] or cur[2] == '1' then
  return 'stale'
end
if cur[3] ~= 'pending' then
  return cur[3] or ''
end
-- A missing field (false) counts as 0, like an empty one.
local attempts = (tonumber(cur[4] or '') or 0) + 1
if attempts > tonumber(ARGV[3]) then
  return 'exhausted'
end
redis.call('HSET', KEYS[1], 'publish_status', 'in_flight', 'publish_attempts', tostring(attempts),
  'publish_claimed_at', ARGV[2])
return 'ok'
