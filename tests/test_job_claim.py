"""PollerWorker's one-round-trip job claim (worker/arq_worker.py, lua/claim_jobs.lua).

It replaces arq's WATCH/EXISTS/ZSCORE/MULTI claim, so it must keep arq's guarantees: a job runs
in one worker at a time, a job that is not due (or gone) is not started, a worker never takes
more than max_jobs, and a failed claim loses nothing and does not end the worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import arq.worker
import pytest
from arq import Retry
from arq.connections import ArqRedis, create_pool
from arq.constants import in_progress_key_prefix
from arq.worker import func
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.conftest import RedisServer, free_port, running_worker, wait_until
from worker import enqueue, get_result
from worker.arq_job_runner import ARQ_RUN_JOB_SHA256
from worker.arq_worker import PollerWorker
from worker.keys import Keys

QUEUE = "claim-test:queue"

ran: list[str] = []
# One per test: an asyncio.Event belongs to the loop it was first awaited on.
gate: dict[str, asyncio.Event] = {}


async def hold(ctx: dict[str, Any], name: str) -> None:
    ran.append(name)
    await gate["release"].wait()


@pytest.fixture
async def pool(redis_server: RedisServer) -> AsyncIterator[ArqRedis]:
    from arq.connections import RedisSettings

    p = await create_pool(RedisSettings.from_dsn(redis_server.url))
    await p.flushall()
    ran.clear()
    gate["release"] = asyncio.Event()
    yield p
    await p.aclose()


def make_worker(pool: ArqRedis, max_jobs: int = 10) -> PollerWorker:
    return PollerWorker(
        functions=[func(hold, name="hold", timeout=30)],
        redis_pool=pool,
        queue_name=QUEUE,
        max_jobs=max_jobs,
        keep_result=0,
        handle_signals=False,
        poll_delay=0.05,
    )


async def queued(pool: ArqRedis, n: int, *, defer: float | None = None) -> list[bytes]:
    for i in range(n):
        await pool.enqueue_job(
            "hold", f"job{i}", _job_id=f"job{i}", _queue_name=QUEUE, _defer_by=defer
        )
    ids: list[bytes] = await pool.zrange(QUEUE, 0, -1)
    return ids


async def finish(worker: PollerWorker) -> None:
    gate["release"].set()
    await asyncio.gather(*worker.tasks.values())


async def test_claims_due_jobs_and_locks_them_with_its_token(pool: ArqRedis) -> None:
    worker = make_worker(pool)
    ids = await queued(pool, 3)
    await worker.start_jobs(ids)
    assert sorted(worker.tasks) == ["job0", "job1", "job2"]
    assert worker.job_counter == 3
    for i in range(3):
        assert await pool.get(in_progress_key_prefix + f"job{i}") == worker.token.encode()
        ttl = await pool.pttl(in_progress_key_prefix + f"job{i}")
        assert 0 < ttl <= worker.in_progress_timeout_s * 1000
    await asyncio.sleep(0.05)
    assert sorted(ran) == ["job0", "job1", "job2"]
    await finish(worker)
    assert worker.job_counter == 0


async def test_a_job_another_worker_holds_is_not_started(pool: ArqRedis) -> None:
    first, second = make_worker(pool), make_worker(pool)
    ids = await queued(pool, 2)
    await first.start_jobs(ids[:1])
    await second.start_jobs(ids)
    assert list(first.tasks) == ["job0"]
    assert list(second.tasks) == ["job1"]
    assert second.job_counter == 1
    await asyncio.sleep(0.05)
    assert sorted(ran) == ["job0", "job1"]
    await finish(first)
    await finish(second)


async def test_its_own_running_job_is_not_started_twice(pool: ArqRedis) -> None:
    worker = make_worker(pool)
    ids = await queued(pool, 1)
    await worker.start_jobs(ids)
    await asyncio.sleep(0.05)
    # Still due and still in the queue while it runs; the lock carries this worker's token.
    await worker.start_jobs(ids)
    await asyncio.sleep(0.05)
    assert ran == ["job0"]
    assert worker.job_counter == 1
    await finish(worker)


async def test_a_retried_claim_gets_back_locks_it_set(pool: ArqRedis) -> None:
    # A claim whose reply was lost left our token on the lock; the retry must take the job
    # rather than leave it locked (and unrun) until the lock expires.
    worker = make_worker(pool)
    ids = await queued(pool, 1)
    await pool.set(in_progress_key_prefix + "job0", worker.token, px=60_000)
    await worker.start_jobs(ids)
    assert list(worker.tasks) == ["job0"]
    await finish(worker)


async def test_jobs_not_due_or_gone_are_not_started(pool: ArqRedis) -> None:
    worker = make_worker(pool)
    ids = await queued(pool, 2, defer=60)
    await worker.start_jobs([*ids, b"no-such-job"])
    assert worker.tasks == {}
    assert worker.job_counter == 0
    assert await pool.exists(in_progress_key_prefix + "job0") == 0


async def test_never_more_than_max_jobs_and_slots_are_refilled(pool: ArqRedis) -> None:
    worker = make_worker(pool, max_jobs=2)
    ids = await queued(pool, 5)
    starting = asyncio.create_task(worker.start_jobs(ids))
    await asyncio.sleep(0.1)
    assert sorted(worker.tasks) == ["job0", "job1"]
    assert worker.job_counter == 2
    # The ones it could not take yet stay unlocked for other workers.
    assert await pool.exists(*(in_progress_key_prefix + f"job{i}" for i in range(2, 5))) == 0
    # As running jobs end, the same call takes the rest (like stock arq), without a new poll.
    gate["release"].set()
    await asyncio.wait_for(starting, timeout=5)
    await asyncio.gather(*worker.tasks.values())
    assert sorted(ran) == [f"job{i}" for i in range(5)]
    assert worker.job_counter == 0


async def test_stops_taking_jobs_when_told_to(pool: ArqRedis) -> None:
    worker = make_worker(pool, max_jobs=1)
    ids = await queued(pool, 3)
    starting = asyncio.create_task(worker.start_jobs(ids))
    await asyncio.sleep(0.05)
    # SIGTERM's drain sets this; a start_jobs waiting for a slot must not start more.
    worker.allow_pick_jobs = False
    gate["release"].set()
    await asyncio.wait_for(starting, timeout=5)
    await asyncio.gather(*worker.tasks.values())
    assert ran == ["job0"]


async def test_a_failed_claim_is_logged_and_loses_nothing(
    pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on this port: every claim fails as during a Redis restart.
    broken = ArqRedis(host="127.0.0.1", port=free_port())
    worker = make_worker(broken, max_jobs=3)
    with caplog.at_level("WARNING", logger="threads_poller.worker"):
        await worker.start_jobs([b"job0", b"job1"])
        await worker.start_jobs([b"job0", b"job1"])
    assert worker.redis_errors == 2
    assert worker.job_counter == 0 and worker.tasks == {}
    warnings = [r for r in caplog.records if "claiming due jobs" in r.getMessage()]
    assert len(warnings) == 1, "one warning per 10 s, not one per poll"
    assert "ConnectionError" in warnings[0].__dict__["error"]
    await broken.aclose()
    # Redis is back: the same worker takes its full max_jobs, so no slot leaked.
    worker._pool = pool
    ids = await queued(pool, 3)
    await worker.start_jobs(ids)
    assert sorted(worker.tasks) == ["job0", "job1", "job2"]
    await finish(worker)


tries: list[int] = []


async def note_try(ctx: dict[str, Any]) -> None:
    tries.append(ctx["job_try"])
    if ctx["job_try"] < 3:
        raise Retry(defer=0)


async def test_the_claim_reads_the_job_and_counts_its_tries(pool: ArqRedis) -> None:
    # arq's run_job would GET the job and INCR its try counter itself; the claim does it.
    tries.clear()
    worker = PollerWorker(
        functions=[func(note_try, name="note_try")],
        redis_pool=pool,
        queue_name=QUEUE,
        keep_result=0,
        handle_signals=False,
        poll_delay=0.02,
        burst=True,
    )
    await pool.enqueue_job("note_try", _job_id="t1", _queue_name=QUEUE)
    await asyncio.wait_for(worker.main(), timeout=10)
    assert tries == [1, 2, 3]
    assert worker.jobs_retried == 2 and worker.jobs_complete == 1
    # Finished the arq way: job, try counter and lock gone, out of the queue.
    assert await pool.exists("arq:job:t1", "arq:retry:t1", in_progress_key_prefix + "t1") == 0
    assert await pool.zcard(QUEUE) == 0


async def test_an_expired_job_is_dropped_as_arq_drops_it(pool: ArqRedis) -> None:
    worker = make_worker(pool)
    ids = await queued(pool, 1)
    await pool.delete("arq:job:job0")  # its data expired while it waited in the queue
    await worker.start_jobs(ids)
    await asyncio.gather(*worker.tasks.values())
    assert ran == [] and worker.jobs_failed == 1
    assert await pool.zcard(QUEUE) == 0
    assert await pool.exists("arq:retry:job0", in_progress_key_prefix + "job0") == 0


def test_the_copied_run_job_is_the_installed_arqs() -> None:
    # worker/arq_job_runner.py is arq's run_job minus its first round trip; another arq version
    # must be compared with it (and the copy refreshed) before it is used.
    source = inspect.getsource(arq.worker.Worker.run_job)
    assert hashlib.sha256(source.encode()).hexdigest() == ARQ_RUN_JOB_SHA256


async def test_a_check_ends_or_reschedules_its_job_in_its_record_script(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    # arq's finish_job work (re-schedule, or delete the job) is done by lua/record.lua; the arq
    # data must end up exactly as arq's own finish_job would leave it.
    settings = settings.model_copy(update={"poll_interval_seconds": 1.5, "poll_max_seconds": 30})
    keys = Keys(settings.key_prefix)
    sim.state.set_script("7200", ["IN_PROGRESS", "FINISHED"])
    async with running_worker(settings) as worker:
        await enqueue(redis, "7200", settings=settings)

        async def checked_once() -> bool:
            r = await get_result(redis, "7200", settings=settings)
            return r is not None and r.checks == 1

        await wait_until(checked_once, timeout=10)
        r = await get_result(redis, "7200", settings=settings)
        assert r is not None and r.next_check_at is not None
        job_id = keys.job_id_base("7200") + r.generation
        await wait_until(lambda: _gone(redis, in_progress_key_prefix + job_id), timeout=5)
        score = await redis.zscore(keys.queue, job_id)
        assert score is not None and abs(score - r.next_check_at * 1000) < 5
        assert await redis.exists("arq:job:" + job_id, "arq:retry:" + job_id) == 2
        assert worker.jobs_retried == 1 and worker.jobs_complete == 0

        async def final() -> bool:
            r = await get_result(redis, "7200", settings=settings)
            return r is not None and r.final

        await wait_until(final, timeout=10)
        await wait_until(lambda: _gone(redis, "arq:job:" + job_id), timeout=5)
        assert await redis.zscore(keys.queue, job_id) is None
        assert await redis.exists("arq:retry:" + job_id, in_progress_key_prefix + job_id) == 0
        assert worker.jobs_complete == 1


async def _gone(redis: Redis, key: str) -> bool:
    return int(await redis.exists(key)) == 0
