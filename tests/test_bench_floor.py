"""The bench's floor phase: a check with no job system is one GET and one EVALSHA, and its figure
is in the default report."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.bench import (
    DEFAULT_PHASES,
    FLOOR_DONE,
    FLOOR_PREFIX,
    Bench,
    Config,
    build_parser,
    floor_checks,
    floor_ids,
)
from simulator import RunningSimulator
from tests.conftest import RedisServer


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


def test_floor_is_in_the_default_run_and_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime

    assert "floor" in DEFAULT_PHASES
    assert build_parser().parse_args([]).phases.split(",") == list(DEFAULT_PHASES)
    cfg = Config(
        quick=True, n=100, capacity_n=100, schedule_seconds=1.0, capacity_run_seconds=1.0,
        phases=DEFAULT_PHASES, scale_workers=(1,), log_level="INFO", worker_env={},
        profile=None, keep=False, max_jobs=200, half_rate=None,
    )  # fmt: skip
    bench = Bench(cfg, tmp_path)
    bench.figures.floor_rate, bench.figures.check_rate = 5000.0, 2000.0
    bench.figures.floor_cpu_ms, bench.figures.floor_redis_cpu_ms = 0.185, 0.036
    bench.summary(datetime.datetime.now(datetime.UTC))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("floor checks/s") and line.endswith(" 5000") for line in lines)
    assert any(line.startswith("ratio ours / floor") and line.endswith(" 0.40") for line in lines)
    assert any("floor CPU ms per check" in line and "0.185 / 0.036" in line for line in lines)
