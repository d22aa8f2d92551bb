"""The bench's floor (bench/baselines.py): a check with no job system is one GET and one EVALSHA.
Its figure in the default report: tests/unit/test_bench_floor.py."""

from __future__ import annotations

from redis.asyncio import Redis

from bench.baselines import FLOOR_DONE, FLOOR_PREFIX, floor_checks, floor_ids
from bench.harness import RedisServer
from simulator import RunningSimulator


async def evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_floor_is_one_get_and_one_evalsha_per_check(
    redis: Redis, redis_server: RedisServer, sim: RunningSimulator
) -> None:
    n = 120
    sim.state.set_script("9*", ["FINISHED"])
    before = await evalsha_calls(redis)
    assert await floor_checks(redis_server.url, sim.base_url, n, 20, 5) == 0
    ids = floor_ids(n)
    assert await redis.zcard(FLOOR_DONE) == n
    assert await evalsha_calls(redis) - before == n
    assert sim.state.total_calls == n
    assert all(sim.state.calls_for(cid).count == 1 for cid in ids)
    one = await redis.hgetall(f"{FLOOR_PREFIX}:result:{ids[-1]}")  # type: ignore[misc]
    assert one[b"status"] == b"FINISHED"
    assert 0 < await redis.ttl(f"{FLOOR_PREFIX}:result:{ids[0]}") <= 86_400


async def test_failed_checks_are_not_counted_as_done(
    redis: Redis, redis_server: RedisServer, sim: RunningSimulator
) -> None:
    sim.state.set_script("9*", ["FINISHED"])
    sim.state.set_script(floor_ids(10)[3], ["notfound"])  # an error body has no status
    assert await floor_checks(redis_server.url, sim.base_url, 10, 4, 2) == 1
    assert await redis.zcard(FLOOR_DONE) == 9


async def test_paced_floor_keeps_to_its_rate_on_ticks(
    redis: Redis, redis_server: RedisServer, sim: RunningSimulator
) -> None:
    """The paced phase's control (bench/paced.py): checks start no sooner than their due time,
    rounded up to a tick, so 60 checks at 200/s on 0.1 s ticks take at least 0.3 s and the
    last ones start together."""
    import time

    sim.state.set_script("9*", ["FINISHED"])
    t0 = time.monotonic()
    assert await floor_checks(redis_server.url, sim.base_url, 60, 20, 5, 200.0, 0.1) == 0
    assert time.monotonic() - t0 >= 0.3
    assert await redis.zcard(FLOOR_DONE) == 60
    assert sim.state.total_calls == 60
