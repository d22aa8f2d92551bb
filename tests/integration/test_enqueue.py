"""Producers: validation, dedup, forced re-polls, and a job that vanished."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import final_of, is_final, wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, enqueue_many, get_result
from worker.core.errors import InvalidIdError
from worker.store.keys import Keys

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("12a4", "digits only"),
        ("-5", "digits only"),
        ("1" * 33, "at most 32"),
        ("١٢٣", "digits only"),
        ("1 2", "digits only"),
    ],
)
async def test_malformed_ids_are_refused_and_nothing_is_written(
    redis: Redis, settings: Settings, bad: str, why: str
) -> None:
    with pytest.raises(InvalidIdError, match=why):
        await enqueue_many(redis, ["111", bad], settings=settings)
    assert await redis.dbsize() == 0  # the good id in the same batch was not written either


async def test_malformed_account_is_refused(redis: Redis, settings: Settings) -> None:
    with pytest.raises(InvalidIdError, match="account id"):
        await enqueue(redis, "111", account="me@example", settings=settings)


async def test_duplicate_enqueue_makes_no_job_and_no_call(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("8001", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    first = await enqueue(redis, "8001", settings=settings)
    again = await enqueue_many(redis, ["8001", "8001"], settings=settings)
    assert first.outcome == "enqueued"
    assert [o.outcome for o in again] == ["duplicate"]  # in-batch duplicates are folded too
    assert await redis.zcard(keys.queue) == 1
    async with running_worker(settings):
        # Keep hammering enqueue while the poll runs: none of it may reach the API.
        for _ in range(10):
            dup = await enqueue(redis, "8001", settings=settings)
            assert dup.outcome in {"duplicate", "final"}
            await asyncio.sleep(0.05)
        await final_of(redis, settings, "8001", timeout=10)
    assert sim.state.calls_for("8001").count == 3
    done = await enqueue(redis, "8001", settings=settings)
    assert (done.outcome, done.status) == ("final", "FINISHED")
    assert await redis.zcard(keys.queue) == 0


async def test_force_polls_a_final_container_again(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_script("8002", ["FINISHED", "PUBLISHED"])
    async with running_worker(settings):
        await enqueue(redis, "8002", settings=settings)

        async def status_is(value: str) -> bool:
            r = await get_result(redis, "8002", settings=settings)
            return r is not None and r.final and r.status == value

        await wait_until(lambda: status_is("FINISHED"), timeout=10)
        again = await enqueue(redis, "8002", force=True, settings=settings)
        assert again.outcome == "restarted"
        await wait_until(lambda: status_is("PUBLISHED"), timeout=10)
    assert sim.state.calls_for("8002").count == 2


async def test_enqueue_restarts_a_poll_whose_job_vanished(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    await enqueue(redis, "8003", settings=settings)
    # Simulate a lost job (e.g. an expired key): the hash says in flight, arq has nothing.
    for key in await redis.keys(JOBS.job_data("*")):
        await redis.delete(key)
    await redis.delete(keys.queue)
    again = await enqueue(redis, "8003", settings=settings)
    assert again.outcome == "restarted"
    assert await redis.zcard(keys.queue) == 1


async def test_reconciler_gives_a_lost_job_back(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """Only Redis can lose a live poll's job (a failover, an unsynced AOF): the sweep gives it
    back, and the poll then ends through its checks like any other."""
    from worker.client.producer import store_for
    from worker.runtime.reconcile import reconcile_once

    sim.state.set_script("8004", ["FINISHED"])
    await enqueue(redis, "8004", settings=settings)
    for key in await redis.keys(JOBS.job_data("*")):
        await redis.delete(key)
    await redis.delete(keys.queue)
    store = store_for(redis, settings)
    now = time.time()
    assert await reconcile_once(store, now=now, grace_seconds=60) == 0  # not past its deadline
    assert await reconcile_once(store, now=now, grace_seconds=-60) == 1
    assert await reconcile_once(store, now=now, grace_seconds=-60) == 0  # it has its job again
    assert await redis.zcard(keys.queue) == 1
    async with running_worker(settings):
        await wait_until(lambda: is_final(redis, settings, "8004"))
    r = await get_result(redis, "8004", settings=settings)
    assert r is not None and r.status == "FINISHED" and r.checks == 1
    assert len(await redis.xrange(keys.events)) == 1


async def test_account_is_stored(redis: Redis, settings: Settings) -> None:
    await enqueue(redis, "8005", account="424242", settings=settings)
    r = await get_result(redis, "8005", settings=settings)
    assert r is not None and r.account == "424242" and r.status == "QUEUED" and not r.final
