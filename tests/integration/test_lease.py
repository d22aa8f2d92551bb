"""Short leases that live as long as the run, against a real redis-server (issue 22).

A run renews its lease while it works (one task per runner, one round trip for all its runs:
``lua/renew.lua``), so it keeps its job for many lease lengths and nobody claims it twice; a run
whose renewals stop loses its job one lease later, is cut off, and every write it still tries is
refused. The pure schedule: tests/unit/test_lease.py; SIGKILLed worker processes:
tests/system/test_kill_rerun.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from tests.helpers.waiting import wait_until
from tests.integration.test_lifecycle import arq_pool
from worker.runtime.runner import JobSpec, Runner
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob, JobQueue

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()

LEASE_S = 0.6  # renewed every 0.2 s


@asynccontextmanager
async def running(runner: Runner) -> AsyncIterator[Runner]:
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        await runner.drain(1.0)
        await task


def runner_of(
    redis: Redis, keys: Keys, spec: JobSpec, name: str, *, renewing: bool = True
) -> Runner:
    return Runner(
        JobQueue(redis, keys, job_ttl_seconds=3600),
        [spec],
        concurrency=2,
        poll_delay_s=0.02,
        name=name,
        lease_s=LEASE_S,
        renewing=renewing,
    )


async def lock_of(redis: Redis, job_id: str) -> tuple[str | None, int]:
    key = JOBS.job_lock(job_id)
    value, ttl = await redis.get(key), await redis.pttl(key)
    return (value.decode() if value is not None else None), int(ttl)


async def test_a_run_that_renews_keeps_its_job_past_many_leases(redis: Redis, keys: Keys) -> None:
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    runs: list[tuple[str, int]] = []
    seen: list[tuple[str | None, int, float]] = []

    async def long_check(job: ClaimedJob) -> None:
        runs.append((job.token, job.try_))
        # Five lease lengths of work, watched from outside: the lock stays this run's, short.
        for _ in range(15):
            await asyncio.sleep(LEASE_S / 3)
            token, ttl = await lock_of(redis, job.job_id)
            score = await redis.zscore(keys.queue, job.job_id)
            seconds, micros = await redis.time()
            assert score is not None
            seen.append((token, ttl, score - (seconds * 1000 + micros / 1000)))
        await queue.settle(job, retry_in_ms=None)

    spec = JobSpec("long", long_check, timeout_s=30, retry_delay_s=0.1)
    await (await arq_pool(redis)).enqueue_job("long", _job_id="job-long", _queue_name=keys.queue)
    first, other = runner_of(redis, keys, spec, "w1"), runner_of(redis, keys, spec, "w2")
    async with running(first):
        await wait_until(lambda: len(runs) == 1, timeout=5)
        # A second worker polls the queue all along: the job is never due for it.
        async with running(other):
            await wait_until(lambda: first.stats.settled == 1, timeout=10)
    assert runs == [("w1/1", 1)]
    assert other.stats.started == 0
    assert all(token == "w1/1" for token, _, _ in seen), seen
    # The lease stays short (never the job's 30 s timeout), and the job's score follows it.
    assert all(0 < ttl <= LEASE_S * 1000 for _, ttl, _ in seen), seen
    assert all(0 < ahead <= LEASE_S * 1000 + 50 for _, _, ahead in seen), seen


async def test_a_run_whose_renewals_stop_loses_its_job_after_one_lease(
    redis: Redis, keys: Keys
) -> None:
    """The renewal task stops (the process lost Redis, or froze): one lease later the job is
    another run's, the first run is cut off, and every write it still tries is refused."""
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    runs: list[ClaimedJob] = []
    second_may_end = asyncio.Event()

    async def check(job: ClaimedJob) -> None:
        runs.append(job)
        if job.try_ == 1:
            await asyncio.sleep(30)  # cut off when its lease ends
        await second_may_end.wait()
        await queue.settle(job, retry_in_ms=None)

    spec = JobSpec("check", check, timeout_s=30, retry_delay_s=30)
    await (await arq_pool(redis)).enqueue_job("check", _job_id="job-stops", _queue_name=keys.queue)
    # The first worker's renewals are this test's to stop.
    first = runner_of(redis, keys, spec, "w1", renewing=False)

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            await first.renew()

    async with running(first):
        await wait_until(lambda: len(runs) == 1, timeout=5)
        first.stop()  # no more claims: the job's next run is the other worker's
        renewer = asyncio.create_task(renew_forever())
        await asyncio.sleep(3 * LEASE_S)
        assert (await lock_of(redis, "job-stops"))[0] == "w1/1"  # renewed: still its own
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        stopped = time.monotonic()
        second = runner_of(redis, keys, spec, "w2")
        async with running(second):
            await wait_until(lambda: len(runs) == 2, timeout=5)
            taken_after = time.monotonic() - stopped
            await wait_until(lambda: first.running == 0, timeout=2)
            stale = runs[0]
            assert (await lock_of(redis, "job-stops"))[0] == "w2/2"
            # Cut off by its lease's end, not its 30 s timeout; and fenced out of everything.
            assert first.stats.failed == 1 and first.stats.settled == 0
            assert not await queue.release(stale, delay_ms=0)
            assert not await queue.settle(stale, retry_in_ms=None)
            assert await queue.renew([stale], lease_ms=60_000) == {("job-stops", "w1/1")}
            token, ttl = await lock_of(redis, "job-stops")
            assert token == "w2/2" and ttl <= LEASE_S * 1000
            second_may_end.set()
            await wait_until(lambda: second.stats.settled == 1, timeout=5)
    # One lease (counted from the last renewal, up to a period before the stop) and a claim.
    assert taken_after < LEASE_S + 0.5, taken_after
    assert [r.try_ for r in runs] == [1, 2]
    assert not await redis.exists(JOBS.job_lock("job-stops"))


async def test_a_run_whose_job_was_taken_stops_at_its_next_renewal(
    redis: Redis, keys: Keys
) -> None:
    """A renewal that finds another run's token in the lock cuts its run off at once, holds
    included, and leaves the successor's lock and score alone."""
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    cut = asyncio.Event()

    async def check(job: ClaimedJob) -> None:
        try:
            async with job.deadline.hold():  # not even a hold outlasts a lost lease
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            cut.set()
            raise

    spec = JobSpec("check", check, timeout_s=30, retry_delay_s=30)
    await (await arq_pool(redis)).enqueue_job("check", _job_id="job-taken", _queue_name=keys.queue)
    runner = runner_of(redis, keys, spec, "w1")
    async with running(runner):
        await wait_until(lambda: runner.running == 1, timeout=5)
        runner.stop()
        # The lease ran out as far as Redis knows (the process was frozen), and a successor
        # claimed the job.
        await redis.delete(JOBS.job_lock("job-taken"))
        await redis.zadd(keys.queue, {"job-taken": 0}, xx=True)
        (successor,) = (await queue.claim("w9", limit=1, lease_ms=60_000)).jobs
        t0 = time.monotonic()
        await asyncio.wait_for(cut.wait(), 2)
        assert time.monotonic() - t0 < LEASE_S / 3 + 0.3
        await wait_until(lambda: runner.running == 0, timeout=2)
    assert runner.stats.failed == 1
    token, ttl = await lock_of(redis, "job-taken")
    assert token == successor.token and ttl > 50_000
    score = await redis.zscore(keys.queue, "job-taken")
    seconds, _ = await redis.time()
    assert score is not None and score > seconds * 1000 + 50_000


async def test_one_round_trip_renews_every_lease_and_works_while_redis_refuses_writes(
    redis: Redis, keys: Keys
) -> None:
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    pool = await arq_pool(redis)
    for i in range(5):
        await pool.enqueue_job("check", _job_id=f"job-{i}", _queue_name=keys.queue)
    jobs = (await queue.claim("w1", limit=5, lease_ms=1000)).jobs
    assert len(jobs) == 5
    await queue.renew(jobs, lease_ms=1000)  # the script is loaded: what follows is one call

    async def script_calls() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = await script_calls()
    try:
        # Redis refuses writes (maxmemory): renewals still go through (allow-oom).
        await redis.config_set("maxmemory", 1)
        assert await queue.renew(jobs, lease_ms=30_000) == set()
    finally:
        await redis.config_set("maxmemory", 0)
    assert await script_calls() == before + 1
    for job in jobs:
        token, ttl = await lock_of(redis, job.job_id)
        assert token == job.token and 25_000 < ttl <= 30_000
