#!lua
-- Write a job's data again, in the format (worker/store/jobdata.py), when its run refused the
-- data it found (a pickle of an earlier release, garbage, data gone, or not what the job's id
-- says) and runs the job as its id says instead (worker/store/queue.py, JobQueue.rewrite): the
-- next run reads it, and the refusal is logged once. Only while the run owns the job, the job is
-- queued, and its data is still what the claim refused (or still gone).
-- KEYS: 1 queue, 2 lock, 3 job data
-- ARGV: 1 run token, 2 job id, 3 new data, 4 '1' if there was data ('0': it was gone),
--       5 the refused data, 6 job ttl ms (when the data has none left)
-- Returns 1, or 0 when nothing was written.
if not owns(KEYS[2], ARGV[1]) or not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
local cur = redis.call('GET', KEYS[3])
if ARGV[4] == '1' then
  if cur ~= ARGV[5] then
    return 0
  end
elseif cur then
  return 0
end
local ttl = redis.call('PTTL', KEYS[3])
if ttl <= 0 then
  ttl = tonumber(ARGV[6])
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl)
return 1
