#!lua flags=allow-oom
-- A run that could not finish (an error, its timeout, a shutdown) gives its job back: due again
-- after a delay, the lock released. Nothing else changes, so the poll goes on from its last
-- recorded check. allow-oom: it only moves a score and deletes a key, and it must work while
-- Redis refuses writes (maxmemory), or the job would wait for its whole lease.
-- KEYS: 1 queue, 2 the job's lock
-- ARGV: 1 run token, 2 job id, 3 delay ms
-- Returns 1, or 0 when the run no longer owns the job (a newer run does; nothing is changed).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[3]), ARGV[2])
redis.call('DEL', KEYS[2])
return 1
