"""Issue 21: no code from Redis. Job data is JSON (worker/store/jobdata.py); a worker never
unpickles it, and data it refuses costs no poll.

Against a real redis-server: jobs the previous release wrote (arq's pickle, produced here with
``arq.jobs.serialize_job``, the only place it is used) for a live poll and a pending webhook
delivery are re-planned from their ids; a malicious pickle is never executed; each refusal is
logged once; a delivery whose poll is gone is dead-lettered with the reason; a job of a foreign
id with unreadable data (stock arq's pickle included) is never run.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import deserialize_job, serialize_job
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.receivers import webhook_receiver
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_lifecycle import runner_for
from tests.integration.test_webhooks import SECRET, hook_settings
from tests.webhook_verify import verifies
from worker import enqueue, get_result
from worker.core.decisions import Decision
from worker.core.result import Changes, PollResult
from worker.core.webhooks import body_for
from worker.jobs.check import final_view
from worker.runtime.runner import JobSpec
from worker.store.jobdata import CHECK_FUNCTION, DELIVER_FUNCTION, decode_job
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob, JobQueue
from worker.store.results import ResultStore, Webhook

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()

REFUSED = "job data refused, the job runs as its id says: %s"
NOT_RUNNABLE = "job not runnable: %s"


class Opens:
    """A pickle that creates ``path`` when it is unpickled: what an attacker would write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


# The previous release's job data, verbatim (worker/store/results.py before issue 21).


def old_check_job_data(self: ResultStore, container_id: str, generation: str) -> bytes:
    return serialize_job(
        CHECK_FUNCTION, (container_id, generation), {}, None, int(time.time() * 1000)
    )


def old_webhook_for(
    self: ResultStore, current: PollResult, body: bytes, now_ms: int
) -> Webhook | None:
    url = current.webhook_url or self.default_webhook_url
    if not url:
        return None
    job_id = self.keys.webhook_job_id(current.container_id, current.generation)
    data = serialize_job(
        DELIVER_FUNCTION, (current.container_id, current.generation, body, url), {}, None, now_ms
    )
    return Webhook(job_id, data)


async def result(redis: Redis, settings: Settings, cid: str) -> PollResult:
    r = await get_result(redis, cid, settings=settings)
    assert r is not None
    return r


def logged(caplog: pytest.LogCaptureFixture, message: str) -> Counter[str]:
    """How many times ``message`` was logged, per job id."""
    return Counter(str(r.__dict__.get("job_id")) for r in caplog.records if r.msg == message)


async def test_old_pickled_jobs_are_replanned_from_their_ids_and_a_malicious_one_never_runs(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = hook_settings(settings, poll_max_seconds=20.0)
    evil = tmp_path / "pwned"
    sim.state.set_script("9702", ["FINISHED"])
    sim.state.set_script("9701", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    sim.state.set_script("9703", ["IN_PROGRESS", "FINISHED"])
    async with webhook_receiver([200]) as rec:
        # The previous release's record of a final state with a webhook: its delivery job
        # pickled, pending.
        await enqueue(redis, "9702", webhook_url=rec.url, settings=settings)
        store = ResultStore.from_settings(redis, settings)
        (job,) = (
            await JobQueue(redis, keys, job_ttl_seconds=3600).claim("n-1", limit=1, lease_ms=30_000)
        ).jobs
        assert job.state is not None
        current = PollResult.from_hash(job.state)
        hook_id = keys.webhook_job_id("9702", current.generation)
        done = Decision("FINISHED", True, None, last_api_status="FINISHED", checks=1)
        body = body_for(final_view(current, done, Changes(), job.now()), hook_id)
        webhook = old_webhook_for(store, current, body, job.now_ms())
        recorded = await store.record(job, current, done, webhook=webhook)
        assert recorded.outcome == "ok"
        assert (await result(redis, settings, "9702")).webhook_status == "pending"
        old_hook = await redis.get(JOBS.job_data(hook_id))
        assert old_hook is not None and old_hook.startswith(b"\x80")  # a pickle
        # This test wrote it: reading it back here is safe (a worker never does).
        sent_body = deserialize_job(old_hook).args[2]
        # The previous release's enqueue: two live polls, their check jobs pickled; one of them
        # then overwritten with a malicious pickle by a Redis user that can write arq:job:*.
        with monkeypatch.context() as m:
            m.setattr(ResultStore, "check_job_data", old_check_job_data)
            await enqueue(redis, "9701", settings=settings)
            await enqueue(redis, "9703", settings=settings)
        live = await result(redis, settings, "9701")
        attacked = await result(redis, settings, "9703")
        live_id = keys.job_id("9701", live.generation)
        attacked_id = keys.job_id("9703", attacked.generation)
        assert (await redis.get(JOBS.job_data(live_id)) or b"").startswith(b"\x80")
        malicious = serialize_job(CHECK_FUNCTION, (Opens(evil),), {}, None, 0)
        assert await redis.set(JOBS.job_data(attacked_id), malicious, keepttl=True)

        # The new worker meets them.
        caplog.set_level(logging.INFO)
        async with running_worker(settings):
            await wait_until(lambda: _final(redis, settings, "9701"), timeout=15)
            await wait_until(lambda: _final(redis, settings, "9703"), timeout=15)
            await wait_until(lambda: _delivered(redis, settings, "9702"), timeout=15)
    assert not evil.exists(), "the malicious pickle was executed"
    r1, r3 = await result(redis, settings, "9701"), await result(redis, settings, "9703")
    assert (r1.status, r1.checks, r3.status, r3.checks) == ("FINISHED", 3, "FINISHED", 2)
    # The delivery: its body built again from the poll's final state (the pickle is never
    # read), what the previous release would have sent but for finalized_at, which the record
    # stamped on Redis' clock (the old body on the worker's, milliseconds apart); signed.
    ((sent, headers),) = rec.got
    hook = await result(redis, settings, "9702")
    assert sent == body_for(hook, hook_id)
    assert {**json.loads(sent), "finalized_at": 0} == {**json.loads(sent_body), "finalized_at": 0}
    assert verifies(SECRET, sent, headers)
    assert await redis.xlen(keys.webhook_dead_letters) == 0
    # Each refusal logged once, though the live poll's job ran three times after it.
    assert logged(caplog, REFUSED) == {live_id: 1, attacked_id: 1, hook_id: 1}
    assert not logged(caplog, NOT_RUNNABLE)


async def test_a_delivery_whose_data_is_refused_and_whose_poll_is_gone_is_dead_lettered(
    redis: Redis, settings: Settings, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """No body to send (the poll's hash expired): a dead letter with the reason, not a retry
    forever, and nothing sent."""
    settings = hook_settings(settings)
    job_id = keys.webhook_job_id("9704", "0a1b2c3d4e5f")
    old = serialize_job(DELIVER_FUNCTION, ("9704", "0a1b2c3d4e5f", b"{}", "x"), {}, None, 0)
    await redis.set(JOBS.job_data(job_id), old, px=60_000)
    await redis.zadd(keys.queue, {job_id: 0})
    caplog.set_level(logging.INFO)
    async with running_worker(settings):
        await wait_until(lambda: redis.xlen(keys.webhook_dead_letters), timeout=10)
        await wait_until(lambda: _gone(redis, keys, job_id), timeout=5)
    ((_, dead),) = await redis.xrange(keys.webhook_dead_letters)
    assert (dead[b"container_id"], dead[b"delivery_id"]) == (b"9704", job_id.encode())
    assert dead[b"reason"].startswith(b"no body to send")
    assert b"pickle" in dead[b"reason"] and dead[b"body"] == b""
    assert logged(caplog, REFUSED) == {job_id: 1}


async def test_garbage_under_a_foreign_id_and_stock_arqs_pickle_never_run(
    redis: Redis, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job no id of ours names, whose data cannot be read, is never run: given back after
    each lease, logged once. Stock arq's enqueue_job (pickle) included."""
    evil = tmp_path / "pwned"
    runs: list[ClaimedJob] = []

    async def flaky(job: ClaimedJob) -> None:  # pragma: no cover - must never run
        runs.append(job)

    stock = ArqRedis(connection_pool=redis.connection_pool)  # arq's default: pickle
    await stock.enqueue_job("flaky", Opens(evil), _job_id="job-evil", _queue_name=keys.queue)
    await redis.set(JOBS.job_data("job-junk"), b"\x00junk", px=60_000)
    await redis.zadd(keys.queue, {"job-junk": 0})
    caplog.set_level(logging.INFO)
    spec = JobSpec("flaky", flaky, timeout_s=0.05, retry_delay_s=0.05)
    async with runner_for(redis, keys, [spec]) as runner:
        # Each is claimed again when its lease (0.05 s + the runner's margin) ends.
        await wait_until(lambda: runner.stats.released >= 4, timeout=15)
    assert not runs and not evil.exists()
    assert logged(caplog, NOT_RUNNABLE) == {"job-evil": 1, "job-junk": 1}
    # Still there, for an operator to look at.
    assert await redis.zscore(keys.queue, "job-evil") is not None


async def test_data_that_disagrees_with_its_id_is_replaced_by_what_the_id_says(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    """Valid JSON naming another poll (or another function) under a check job's id: the run is
    the id's poll, and the data is written again as the id says (fenced)."""
    from worker.store.jobdata import encode_job

    await enqueue(redis, "9705", settings=settings)
    r = await result(redis, settings, "9705")
    job_id = keys.job_id("9705", r.generation)
    lying = encode_job(CHECK_FUNCTION, ("9999", "ffffffffffff"), 0)
    await redis.set(JOBS.job_data(job_id), lying, keepttl=True)
    queue = JobQueue(redis, keys, job_ttl_seconds=3600)
    (job,) = (await queue.claim("w", limit=1, lease_ms=30_000)).jobs
    assert (job.function, job.args) == (CHECK_FUNCTION, ("9705", r.generation))
    assert "not what its id says" in job.replanned and job.state is not None
    assert await queue.rewrite(job)
    assert not await queue.rewrite(job)  # only over the data it refused
    data = await redis.get(JOBS.job_data(job_id))
    assert data is not None and decode_job(data).args == ("9705", r.generation)
    assert await redis.pttl(JOBS.job_data(job_id)) > 0


async def _final(redis: Redis, settings: Settings, cid: str) -> bool:
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.final


async def _delivered(redis: Redis, settings: Settings, cid: str) -> bool:
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.webhook_status == "delivered"


async def _gone(redis: Redis, keys: Keys, job_id: str) -> bool:
    return await redis.zscore(keys.queue, job_id) is None
