#!lua flags=allow-oom
-- The intake's consumers (worker/runtime/intake.py).
-- One script, so that no consumer can read an entry between the pending check and the delete.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] a consumer to delete whatever its idle time ("" for
-- none), ARGV[3] idle bound in ms. Deletes the consumers with no pending entry that are ARGV[2] or
-- idle for longer than the bound; returns their names. (RESP2 in Lua: each consumer of XINFO
-- CONSUMERS is a flat name/value list.)
-- (allow-oom: as when it was sent inline without flags, the intake reads and acknowledges its
-- stream when Redis is over maxmemory; no command here adds memory but the group's own.)
local deleted = {}
local bound = tonumber(ARGV[3])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #consumer, 2 do c[consumer[i]] = consumer[i + 1] end
  if c['pending'] == 0 and (c['name'] == ARGV[2] or c['idle'] > bound) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    deleted[#deleted + 1] = c['name']
  end
end
return deleted
