#!lua flags=allow-oom
-- Renew the leases of a worker's running jobs, all in one round trip (worker/store/queue.py,
-- JobQueue.renew; worker/runtime/runner.py renews every third of a lease). For each job whose lock
-- still holds the run's token, the lock lives another lease and the job's score moves to the
-- lease's end (so a claim finds it due exactly when the lock is gone), on Redis' clock. A lock
-- that holds another token or none (the lease ran out, a successor claimed the job, the run
-- ended it) is left alone: an expired lease is never brought back, and the run is told to stop.
-- allow-oom: it only moves scores and TTLs, and a Redis that refuses writes (maxmemory) must not
-- cost every running job its lease.
-- KEYS: 1 queue, then each job's lock (in ARGV's order)
-- ARGV: 1 lease ms, 2 unused (was the lock prefix), then per job: id, run token
-- Returns the runs that no longer own their job: job id, token, job id, token, ...
local now = now_ms()
local lease = tonumber(ARGV[1])
local lost = {}
for i = 3, #ARGV - 1, 2 do
  local lock = KEYS[1 + (i - 1) / 2]
  if owns(lock, ARGV[i + 1]) then
    redis.call('PEXPIRE', lock, lease)
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
