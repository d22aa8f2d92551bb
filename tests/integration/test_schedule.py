"""The schedule as the API sees it: how many calls, how far apart, never past the window."""

from __future__ import annotations

import asyncio
import itertools
import time

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import final_of, wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, get_result
from worker.store.keys import Keys


async def test_check_count_and_spacing(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = settings.model_copy(update={"poll_interval_seconds": 0.5, "poll_max_seconds": 2.5})
    sim.state.set_script("7001", ["IN_PROGRESS"])
    t0 = time.time()
    async with running_worker(settings):
        await enqueue(redis, "7001", settings=settings)

        await final_of(redis, settings, "7001", timeout=10)
    times = sim.state.calls_for("7001").times
    assert len(times) == 6  # t = 0, 0.5, ..., 2.5
    assert times[0] - t0 < 0.5  # the first check runs right away
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.5 - 0.02 for g in gaps), gaps  # never sooner than the interval
    assert all(g < 0.5 + 0.4 for g in gaps), gaps  # and not much later
    r = await get_result(redis, "7001", settings=settings)
    assert r is not None and r.enqueued_at is not None
    assert times[-1] - r.enqueued_at <= 2.5 + 0.25  # within the window (+ slack)


async def test_no_api_call_after_final(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_script("7002", ["IN_PROGRESS", "FINISHED"])
    async with running_worker(settings):
        await enqueue(redis, "7002", settings=settings)

        await final_of(redis, settings, "7002", timeout=10)
        count = sim.state.calls_for("7002").count
        # Give the worker two intervals to (wrongly) check again.
        await asyncio.sleep(2 * settings.poll_interval_seconds)
    assert count == 2 and sim.state.calls_for("7002").count == 2


async def test_window_zero_means_one_check(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = settings.model_copy(update={"poll_max_seconds": 0.0})
    sim.state.set_script("7003", ["IN_PROGRESS"])
    async with running_worker(settings):
        await enqueue(redis, "7003", settings=settings)

        await final_of(redis, settings, "7003", timeout=10)
    r = await get_result(redis, "7003", settings=settings)
    assert r is not None and r.status == "TIMED_OUT" and r.checks == 1
    assert sim.state.calls_for("7003").count == 1


async def test_a_run_before_its_check_is_due_makes_no_call(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    # A worker killed (or Redis lost) between recording a check and re-scheduling the job leaves
    # the job due at once; its re-run must wait for the interval, not call the API early.
    settings = settings.model_copy(update={"poll_interval_seconds": 3.0, "poll_max_seconds": 30})
    sim.state.set_script("7010", ["IN_PROGRESS", "FINISHED"])
    keys = Keys(settings.key_prefix)
    async with running_worker(settings):
        await enqueue(redis, "7010", settings=settings)

        async def checked_once() -> bool:
            r = await get_result(redis, "7010", settings=settings)
            return r is not None and r.checks == 1 and r.next_check_at is not None

        await wait_until(checked_once, timeout=10)
        r = await get_result(redis, "7010", settings=settings)
        assert r is not None
        job_id = keys.job_id_base("7010") + r.generation
        # The lost re-schedule: the job is due now again.
        await wait_until(lambda: _queued(redis, keys, job_id), timeout=5)
        await redis.zadd(keys.queue, {job_id: int(time.time() * 1000)})
        await asyncio.sleep(1.0)
        assert sim.state.calls_for("7010").count == 1

        await final_of(redis, settings, "7010", timeout=10)
    times = sim.state.calls_for("7010").times
    assert len(times) == 2
    assert times[1] - times[0] >= 3.0 - 0.02, times


async def _queued(redis: Redis, keys: Keys, job_id: str) -> bool:
    return await redis.zscore(keys.queue, job_id) is not None
