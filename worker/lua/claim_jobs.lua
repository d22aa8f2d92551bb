-- Claim due arq jobs for one worker in a single round trip. Stock arq spends four (WATCH,
-- EXISTS, ZSCORE, MULTI/PSETEX/EXEC) per job, and a connection cut between WATCH and EXEC
-- raises WatchError out of its main loop; a script is atomic, so neither happens here.
-- KEYS: 1 arq queue (zset)
-- ARGV: 1 in-progress key prefix, 2 now (ms), 3 lock ttl (ms), 4 this worker's token,
--       5 how many to claim at most, 6 job key prefix, 7 retry key prefix,
--       8.. job ids (due when read, in queue order)
-- Returns {examined, job_id, score, job, try, job_id, score, job, try, ...}: how many of the ids
-- it looked at (it stops once it holds the limit; the caller goes on from there), then for each
-- job it now holds: its score, its data (nil if it expired) and its try number. Reading the job
-- and counting the try here is what arq's run_job would otherwise do in a round trip of its own.
-- A lock already holding this worker's token counts as claimed: a retried call whose first
-- reply was lost (connection cut after the script ran) gets its jobs back instead of leaving
-- them locked until the lock expires. The caller never passes a job it is running itself.
local claimed = {0}
local limit = tonumber(ARGV[5])
local now = tonumber(ARGV[2])
local n = 0
for i = 8, #ARGV do
  if n >= limit then
    break
  end
  claimed[1] = i - 7
  local job_id = ARGV[i]
  local lock = ARGV[1] .. job_id
  local holder = redis.call('GET', lock)
  if holder == false or holder == ARGV[4] then
    local score = redis.call('ZSCORE', KEYS[1], job_id)
    -- Gone: finished meanwhile. Later than now: re-scheduled meanwhile (e.g. by another worker).
    if score and tonumber(score) <= now then
      redis.call('SET', lock, ARGV[4], 'PX', ARGV[3])
      n = n + 1
      local retry = ARGV[7] .. job_id
      local try = redis.call('INCR', retry)
      redis.call('EXPIRE', retry, 88400)  -- arq's own figure
      claimed[#claimed + 1] = job_id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = redis.call('GET', ARGV[6] .. job_id)
      claimed[#claimed + 1] = try
    end
  end
end
return claimed
