"""One fenced job lifecycle on Redis' clock: no failure path of a run deletes or strands a poll.

Against a real redis-server (and the simulator where a worker runs): a run that raises, times
out, lost its lease or used up its tries; arq's own job API reading our jobs; the settings that
could strand data (those refused at load time: tests/unit/test_lifecycle.py); the account state one
throttling episode leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from pydantic import SecretStr
from redis.asyncio import Redis

from api_client.client import make_session
from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import is_final, wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, get_result
from worker.client.producer import store_for
from worker.core.decisions import Decision
from worker.core.targets import WebhookPolicy
from worker.jobs.context import PollerContext
from worker.jobs.quota import token_source
from worker.runtime.app import build_poller, job_specs
from worker.runtime.runner import JobSpec, Runner
from worker.store.accounts import AccountStore
from worker.store.jobdata import CHECK_FUNCTION, job_deserializer, job_serializer
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob, JobQueue

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()

# ----- the runner: every failure path ends in "the job runs again" -------------------------


@asynccontextmanager
async def runner_for(
    redis: Redis, keys: Keys, specs: list[JobSpec], **kw: float
) -> AsyncIterator[Runner]:
    runner = Runner(
        JobQueue(redis, keys, job_ttl_seconds=3600),
        specs,
        concurrency=int(kw.get("concurrency", 4)),
        poll_delay_s=0.02,
    )
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        await runner.drain(1.0)
        await task


async def arq_pool(redis: Redis) -> ArqRedis:
    """arq's producer, given our job format (README, "Why our own runner")."""
    return ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )


async def test_a_job_from_arqs_enqueue_job_runs_and_a_failing_run_is_released(
    redis: Redis, keys: Keys
) -> None:
    """arq's producer API and key layout stay valid: arq's enqueue_job (given our serializer)
    feeds our runner, and arq's Job.status() and Job.info() read its state. A run that raises
    gives the job back; none deletes it."""
    runs: list[int] = []
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)

    async def flaky(job: ClaimedJob) -> None:
        runs.append(job.try_)
        assert job.args == (7, "x")
        if len(runs) < 3:
            raise RuntimeError("boom")
        await queue.settle(job, retry_in_ms=None)

    pool = await arq_pool(redis)
    job = await pool.enqueue_job("flaky", 7, "x", _job_id="job-1", _queue_name=keys.queue)
    assert job is not None
    arq_job = Job("job-1", redis, _queue_name=keys.queue, _deserializer=job_deserializer)
    assert await arq_job.status() is JobStatus.queued
    info = await arq_job.info()
    assert info is not None and (info.function, info.args) == ("flaky", (7, "x"))
    spec = JobSpec("flaky", flaky, timeout_s=1.0, retry_delay_s=0.05)
    async with runner_for(redis, keys, [spec]) as runner:
        await wait_until(lambda: len(runs) == 3, timeout=5)
        await wait_until(lambda: runner.stats.settled == 1, timeout=5)
    assert runs == [1, 2, 3]  # arq's try counter, one per run
    assert (runner.stats.failed, runner.stats.released) == (2, 2)
    assert await arq_job.status() is JobStatus.not_found  # ended by its own settle only


async def test_a_timed_out_run_is_released_and_runs_again(redis: Redis, keys: Keys) -> None:
    runs: list[int] = []
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)

    async def slow_once(job: ClaimedJob) -> None:
        runs.append(job.try_)
        if job.try_ == 1:
            await asyncio.sleep(5)
        await queue.settle(job, retry_in_ms=None)

    await (await arq_pool(redis)).enqueue_job("slow", _job_id="job-2", _queue_name=keys.queue)
    arq_job = Job("job-2", redis, _queue_name=keys.queue)
    spec = JobSpec("slow", slow_once, timeout_s=0.3, retry_delay_s=0.2)
    async with runner_for(redis, keys, [spec]) as runner:
        await wait_until(lambda: runner.stats.failed == 1, timeout=5)
        # Released, not deleted: still arq's deferred job, due again after the retry delay.
        assert await arq_job.status() in (JobStatus.deferred, JobStatus.queued)
        await wait_until(lambda: runner.stats.settled == 1, timeout=5)
    assert runs == [1, 2]


async def test_a_shutdown_gives_running_jobs_back_at_once(redis: Redis, keys: Keys) -> None:
    started = asyncio.Event()

    async def forever(job: ClaimedJob) -> None:
        started.set()
        await asyncio.sleep(60)

    await (await arq_pool(redis)).enqueue_job("forever", _job_id="job-3", _queue_name=keys.queue)
    spec = JobSpec("forever", forever, timeout_s=30, retry_delay_s=30)
    async with runner_for(redis, keys, [spec]):
        await asyncio.wait_for(started.wait(), 5)
    # Cancelled by the drain and released: due now (not after the 32 s lease), unlocked.
    score = await redis.zscore(keys.queue, "job-3")
    seconds, _ = await redis.time()
    assert score is not None and score <= seconds * 1000 + 1000
    assert not await redis.exists(JOBS.job_lock("job-3"))
    assert await redis.exists(JOBS.job_data("job-3"))


async def test_an_unknown_function_is_kept_for_a_worker_that_knows_it(
    redis: Redis, keys: Keys
) -> None:
    await (await arq_pool(redis)).enqueue_job("nobody", _job_id="job-4", _queue_name=keys.queue)

    async def other(job: ClaimedJob) -> None:  # pragma: no cover - never called
        raise AssertionError

    async with runner_for(redis, keys, [JobSpec("other", other, 1.0, 1.0)]) as runner:
        await wait_until(lambda: runner.stats.released == 1, timeout=5)
    assert await redis.exists(JOBS.job_data("job-4"))
    assert await redis.zscore(keys.queue, "job-4") is not None


# ----- fencing: a run that lost its lease changes nothing ----------------------------------


async def claim_one(redis: Redis, keys: Keys, *, lease_ms: int = 30_000) -> ClaimedJob:
    claim = await JobQueue(redis, keys, job_ttl_seconds=3600).claim(
        "test-worker", limit=1, lease_ms=lease_ms
    )
    (job,) = claim.jobs
    return job


async def test_a_run_past_its_lease_can_write_nothing(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    """The SIGSTOP case in miniature: run A stalls past its lease, run B takes the job; every
    write A tries afterwards is refused and B's poll goes on."""
    store = store_for(redis, settings)
    accounts = AccountStore(redis, keys)
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    await enqueue(redis, "7001", publish=True, settings=settings)
    stale = await claim_one(redis, keys, lease_ms=150)
    await asyncio.sleep(0.3)
    fresh = await claim_one(redis, keys)
    assert (stale.try_, fresh.try_) == (1, 2) and stale.token != fresh.token
    current = await store.load("7001")
    assert current is not None
    done = Decision("FINISHED", True, None, last_api_status="FINISHED", checks=1)
    assert (await store.record(stale, current, done)).outcome == "stale"
    assert not await queue.release(stale, delay_ms=0)
    assert not await queue.settle(stale, retry_in_ms=None)
    assert (await store.claim_publish(stale, current, max_attempts=3)).outcome == "stale"
    throttle = await accounts.note_throttle(
        stale, "default", sent_ms=0, base=60, cap=900, at_least_ms=0, code="4"
    )
    assert throttle.stale
    assert (await accounts.load("default")).throttle_level == 0
    # Nothing of A's landed: B's poll is live, its job queued and locked by B.
    r = await store.load("7001")
    assert r is not None and not r.final and r.checks == 0
    assert await queue.owner(fresh.job_id) == fresh.token
    assert await redis.xlen(keys.events) == 0
    # B's writes go through.
    assert (await store.record(fresh, current, done)).outcome == "ok"
    assert await redis.xlen(keys.events) == 1
    # And the job is gone only now, with the final state.
    assert not await redis.exists(JOBS.job_data(fresh.job_id))


async def test_a_check_job_is_never_ended_while_its_poll_is_live(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    await enqueue(redis, "7002", settings=settings)
    job = await claim_one(redis, keys)
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    assert not await queue.settle(job, retry_in_ms=None, unless_live=("7002", str(job.args[1])))
    assert await redis.exists(JOBS.job_data(job.job_id))


async def test_one_throttling_episode_is_one_step_of_back_off(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    """A dozen answers to requests that were in flight when the pause began keep the pause as
    it is; an answer to a request sent after the pause ended raises it one step."""
    accounts = AccountStore(redis, keys)
    await enqueue(redis, "7003", settings=settings)
    job = await claim_one(redis, keys)
    seconds, micros = await redis.time()
    sent = int(seconds) * 1000 + micros // 1000 - 50
    steps = [
        await accounts.note_throttle(
            job, "default", sent_ms=sent, base=60, cap=900, at_least_ms=0, code="4"
        )
        for _ in range(12)
    ]
    assert [s.level for s in steps] == [1] * 12
    assert [s.changed for s in steps] == [True] + [False] * 11
    pause = steps[0].paused_until
    assert all(s.paused_until == pause for s in steps)
    assert pause - sent / 1000 == pytest.approx(60, abs=1)
    # A good answer to a request sent before the pause ended does not clear it ...
    assert not (await accounts.clear_throttle(job, "default", sent_ms=sent)).changed
    # ... a throttled answer to a request sent after it ended is the next step.
    after = int(pause * 1000) + 1
    again = await accounts.note_throttle(
        job, "default", sent_ms=after, base=60, cap=900, at_least_ms=0, code="4"
    )
    assert (again.level, again.changed) == (2, True)
    assert (await accounts.load("default")).throttle_level == 2


# ----- give up: too many runs end the poll, saying why -------------------------------------


async def test_runs_beyond_the_limit_end_the_poll_saying_why(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = settings.model_copy(update={"poll_max_seconds": 60.0})
    session = make_session(timeout_seconds=1, max_connections=4)
    try:
        poller: PollerContext = build_poller(
            settings, redis, token_source(settings), session, session, WebhookPolicy()
        )
        check_spec = job_specs(settings, poller)[0]
        assert check_spec.name == CHECK_FUNCTION and check_spec.give_up is not None

        async def always_fails(job: ClaimedJob) -> None:
            raise RuntimeError("a bug in the check")

        spec = dataclasses.replace(check_spec, run=always_fails, max_tries=3, retry_delay_s=0.05)
        await enqueue(redis, "7004", settings=settings)
        async with runner_for(redis, keys, [spec]) as runner:
            await wait_until(lambda: runner.stats.given_up == 1, timeout=10)
            await wait_until(lambda: is_final(redis, settings, "7004"), timeout=5)
    finally:
        await session.close()
    r = await get_result(redis, "7004", settings=settings)
    assert r is not None and r.status == "TIMED_OUT" and r.runs == 4
    assert r.last_error is not None and "given up" in r.last_error and "3 runs" in r.last_error
    assert await redis.xlen(keys.events) == 1


# ----- settings that cannot strand data ----------------------------------------------------


async def test_the_job_lives_as_long_as_its_poll(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """A poll longer than a day keeps its job: the job's TTL follows the result's."""
    settings = settings.model_copy(
        update={"result_ttl_seconds": 3 * 86400, "poll_max_seconds": 600.0}
    )
    sim.state.set_script("7005", ["IN_PROGRESS"])
    await enqueue(redis, "7005", settings=settings)
    job_key = keys.job_data(keys.job_id("7005", await _generation(redis, keys, "7005")))
    assert await redis.pttl(job_key) > 2 * 86400 * 1000
    async with running_worker(settings):
        await wait_until(lambda: _checks(redis, settings, "7005", 2), timeout=10)
    assert await redis.pttl(job_key) > 2 * 86400 * 1000


async def _generation(redis: Redis, keys: Keys, cid: str) -> str:
    gen = await redis.hget(keys.result(cid), "generation")  # type: ignore[misc]
    assert gen is not None
    return str(gen.decode())


async def _checks(redis: Redis, settings: Settings, cid: str, n: int) -> bool:
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.checks >= n


# ----- the schedule follows Redis' clock ---------------------------------------------------


async def test_enqueue_times_come_from_redis(redis: Redis, settings: Settings) -> None:
    before = time.time()
    await enqueue(redis, "7006", settings=settings)
    seconds, micros = await redis.time()
    r = await get_result(redis, "7006", settings=settings)
    assert r is not None and r.enqueued_at is not None and r.deadline_at is not None
    assert abs(r.enqueued_at - (seconds + micros / 1e6)) < 0.5
    assert r.deadline_at - r.enqueued_at == pytest.approx(settings.poll_max_seconds, abs=0.002)
    assert r.next_check_at == r.enqueued_at and before - 1 < r.enqueued_at


async def test_paced_enqueues_get_their_own_slots(redis: Redis, settings: Settings) -> None:
    """Pacing is scheduling: a burst of one account's containers is spread at enqueue, each
    check due at its own slot (no run bounces), and the wait pushes the window out."""
    settings = settings.model_copy(update={"account_max_requests_per_second": 10.0})
    store = store_for(redis, settings)
    from worker.store.results import EnqueueRequest

    await store.enqueue([EnqueueRequest(f"71{i:02d}", account="5") for i in range(20)])
    results = await store.load_many([f"71{i:02d}" for i in range(20)])
    due = sorted(r.next_check_at or 0 for r in results if r is not None)
    # One per 100 ms slot: the first at once, the others at the starts of the next slots.
    assert len({round(t * 1000) // 100 for t in due}) == 20
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert all(g == pytest.approx(0.1, abs=0.002) for g in gaps[1:]) and gaps[0] <= 0.101
    assert 1.8 <= due[-1] - due[0] <= 1.9
    last = max((r for r in results if r is not None), key=lambda r: r.next_check_at or 0)
    # Its own wait: from its own enqueue (the pipeline's scripts each read Redis' clock, a few
    # ms apart under load) to its slot.
    assert last.next_check_at is not None and last.enqueued_at is not None
    assert last.window_delay == pytest.approx(last.next_check_at - last.enqueued_at, abs=0.002)
    # Another account is not held back by this one's burst.
    await store.enqueue([EnqueueRequest("7199", account="6")])
    r = await store.load("7199")
    assert r is not None and r.next_check_at == r.enqueued_at


# ----- what a run says, and whom it waits for -----------------------------------------------


async def test_a_published_media_id_is_said_to_be_one(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_script("7201", ["nonexisting_field"])
    await enqueue(redis, "7201", settings=settings)
    async with running_worker(settings):
        await wait_until(lambda: is_final(redis, settings, "7201"), timeout=10)
    r = await get_result(redis, "7201", settings=settings)
    assert r is not None and r.status == "FAILED" and r.last_error_code == 100
    assert r.last_error is not None and "published media id" in r.last_error


async def test_publishing_waits_while_the_account_is_paused(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """The quota and publish calls obey the account's throttle pause like the checks do."""
    settings = settings.model_copy(
        update={
            "publish_grace_seconds": 1.0,
            "poll_max_seconds": 10.0,
            "publish_min_age_seconds": 0,
        }
    )
    sim.state.set_script("7202", ["FINISHED"])
    await enqueue(redis, "7202", account="888", publish=True, settings=settings)

    async def finished_seen() -> bool:
        r = await get_result(redis, "7202", settings=settings)
        return r is not None and r.publish_status == "pending"

    async with running_worker(settings):
        await wait_until(finished_seen, timeout=10)
        quota_calls = sim.state.quota_calls  # the periodic refresh's, at start-up
        seconds, micros = await redis.time()
        paused_until = seconds + micros / 1e6 + 1.5
        await redis.hset(  # type: ignore[misc]
            keys.account("888"),
            mapping={"throttled_until": f"{paused_until:.3f}", "throttle_level": 1},
        )
        await asyncio.sleep(1.0)
        assert sim.state.calls_for("7202").publish_calls == 0
        assert sim.state.quota_calls == quota_calls
        await wait_until(lambda: is_final(redis, settings, "7202"), timeout=10)
    r = await get_result(redis, "7202", settings=settings)
    assert r is not None and r.status == "PUBLISHED"
    assert r.published_at is not None and r.published_at >= paused_until - 0.01


async def test_the_workers_pacing_rules_not_the_producers(redis: Redis, settings: Settings) -> None:
    """Workers publish their pacing; a producer's own setting is only the fallback."""
    from worker.store.results import EnqueueRequest

    # The worker's: pacing off.
    await store_for(redis, settings).publish_config(webhook_signing=False)
    paced_producer = settings.model_copy(update={"account_max_requests_per_second": 1.0})
    store = store_for(redis, paced_producer)
    await store.enqueue([EnqueueRequest(f"73{i:02d}", account="5") for i in range(5)])
    results = await store.load_many([f"73{i:02d}" for i in range(5)])
    assert all(r is not None and r.next_check_at == r.enqueued_at for r in results)


async def test_the_workers_publish_their_config_again_after_redis_comes_back_empty(
    redis: Redis, settings: Settings
) -> None:
    """A Redis that restarted without its data has forgotten ``{prefix}:config``: producers
    would refuse every webhook URL and fall back to their own pacing until a worker restarted.
    The workers write it again within a reconcile period (here 1 s: min(60, interval))."""
    settings = settings.model_copy(update={"webhook_secret": SecretStr("s" * 32)})
    keys = Keys(settings.key_prefix)
    async with running_worker(settings):
        await wait_until(lambda: redis.exists(keys.config), timeout=5)
        await redis.flushall()
        assert not await redis.exists(keys.config)
        await wait_until(lambda: redis.exists(keys.config), timeout=5)
    assert await redis.hget(keys.config, "webhook_signing") == b"1"  # type: ignore[misc]
