#!lua
-- Replay a dead-lettered intake entry: its original fields back on the intake stream (the
-- workers apply the intake's rules again: an entry that is still bad is dead-lettered again,
-- with a new id), the dead letter removed; atomically.
-- KEYS: 1 dead-letter stream, 2 intake stream
-- ARGV: 1 dead letter id, 2 the marker of a value cut short when it was dead-lettered
-- Returns {'replayed', new entry id} or {'gone'} / {'unreadable'} / {'truncated'} / {'empty'}.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return {'gone'}
end
local flat = found[1][2]
local raw = nil
for i = 1, #flat, 2 do
  if flat[i] == 'fields' then raw = flat[i + 1] end
end
local ok, fields = pcall(cjson.decode, raw or '')
if not ok or type(fields) ~= 'table' then
  return {'unreadable'}
end
local args = {}
for k, v in pairs(fields) do
  if type(k) ~= 'string' or type(v) ~= 'string' then
    return {'unreadable'}
  end
  if #v >= #ARGV[2] and string.sub(v, -#ARGV[2]) == ARGV[2] then
    return {'truncated'}
  end
  args[#args + 1] = k
  args[#args + 1] = v
end
if #args == 0 then
  return {'empty'}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return {'replayed', id}
