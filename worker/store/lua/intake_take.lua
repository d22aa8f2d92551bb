#!lua flags=allow-oom
-- The intake's read (worker/runtime/intake.py).
-- An entry is judged inside Redis before any of it reaches this process: a producer can XADD one
-- entry of millions of fields, which redis-py would turn into millions of Python objects (the
-- worker dies of memory, is restarted, claims the same entry first, and dies again: no later
-- entry of any producer becomes a poll). This script reads new entries (XREADGROUP ">") or
-- claims stale ones (XAUTOCLAIM) for the consumer, and returns whole only the entries within
-- max_fields fields and max_bytes bytes that were delivered at most max_deliveries times; of any
-- other it returns the id, its size and a bounded preview (20 fields, names cut at 64 bytes,
-- values at 1 KiB, what a dead letter keeps), or nothing of its body once delivered too often.
-- KEYS: 1 the stream
-- ARGV: 1 one JSON object, its named arguments (worker/store/script_args.py, IntakeTakeArgs:
--       every value a string): group, consumer, mode ('new' or 'claim'), count (entries read at
--       most), max_bytes, max_fields, max_deliveries, claim_idle_ms (how long an entry stays
--       pending before 'claim' takes it over)
-- Reply: {kind, id, fields, bytes, deliveries, flat field list} per entry; kind "ok" (the whole
-- entry), "big" (a preview) or "poison" (no fields). Entries deleted while pending are
-- acknowledged here.
-- (allow-oom: as when it was sent inline without flags, the intake reads and acknowledges its
-- stream when Redis is over maxmemory; no command here adds memory but the group's own.)
local args = cjson.decode(ARGV[1])
local stream, group, consumer, mode = KEYS[1], args.group, args.consumer, args.mode
local count, max_bytes = tonumber(args.count), tonumber(args.max_bytes)
local max_fields, max_deliveries = tonumber(args.max_fields), tonumber(args.max_deliveries)
local entries
if mode == 'new' then
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                           'STREAMS', stream, '>')
  entries = reply and reply[1] and reply[1][2] or {}
else
  local reply = redis.call('XAUTOCLAIM', stream, group, consumer, args.claim_idle_ms, '0-0',
                           'COUNT', count)
  entries = reply[2]
end
local out = {}
for _, e in ipairs(entries) do
  if not e or not e[2] then
    -- Deleted while pending (Redis 6.2 lists it without fields): nothing to deliver.
    if e and e[1] then redis.call('XACK', stream, group, e[1]) end
  else
    local id, flat = e[1], e[2]
    local deliveries = 1
    if mode ~= 'new' then
      local p = redis.call('XPENDING', stream, group, id, id, 1)
      if p[1] then deliveries = p[1][4] end
    end
    local size = 0
    for i = 1, #flat do size = size + #flat[i] end
    local nfields = #flat / 2
    if deliveries > max_deliveries then
      out[#out + 1] = {'poison', id, nfields, size, deliveries, {}}
    elseif nfields > max_fields or size > max_bytes then
      local preview = {}
      for i = 1, math.min(#flat, 40), 2 do
        local value = flat[i + 1]
        if #value > 1024 then value = string.sub(value, 1, 1024) .. '...[truncated]' end
        preview[#preview + 1] = string.sub(flat[i], 1, 64)
        preview[#preview + 1] = value
      end
      out[#out + 1] = {'big', id, nfields, size, deliveries, preview}
    else
      out[#out + 1] = {'ok', id, nfields, size, deliveries, flat}
    end
  end
end
return out
