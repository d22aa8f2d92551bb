"""Issue 7: opt-in auto-publish, at most one publish call per container, whatever happens."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.helpers.env import worker_env
from tests.helpers.waiting import final_of, wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, enqueue_many, get_result
from worker.core.result import PollResult
from worker.store.keys import Keys

ACCOUNT = "777"


def pub_settings(settings: Settings, **more: object) -> Settings:
    # The minimum age (30 s by default) is tested on its own, below.
    update: dict[str, object] = {
        "publish_grace_seconds": 0.1,
        "poll_max_seconds": 3.0,
        "publish_min_age_seconds": 0.0,
    }
    update.update(more)
    return settings.model_copy(update=update)


async def publish_one(
    redis: Redis, settings: Settings, sim: RunningSimulator, cid: str, steps: list[str]
) -> PollResult:
    sim.state.set_script(cid, steps)
    await enqueue(redis, cid, account=ACCOUNT, publish=True, settings=settings)
    async with running_worker(settings):
        return await final_of(redis, settings, cid)


async def test_publishes_once_finished(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = pub_settings(settings)
    sim.state.set_quota(ACCOUNT, quota_usage=10)
    r = await publish_one(redis, settings, sim, "9101", ["IN_PROGRESS", "FINISHED"])
    assert (r.status, r.publish_status) == ("PUBLISHED", "published")
    assert r.media_id and r.media_id == sim.state.published_media_id("9101")
    assert r.quota_usage == 10 and r.quota_total == 250
    assert r.finished_at is not None and r.published_at is not None
    assert r.published_at - r.finished_at >= 0.1  # the grace before publishing
    calls = sim.state.calls_for("9101")
    assert (calls.publish_calls, calls.publishes, calls.count) == (1, 1, 2)
    ((_, event),) = await redis.xrange(keys.events)
    assert event[b"status"] == b"PUBLISHED" and event[b"media_id"] == r.media_id.encode()


async def test_quota_exhausted_is_final_with_figures(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings)
    sim.state.set_quota(ACCOUNT, quota_usage=250)
    r = await publish_one(redis, settings, sim, "9102", ["FINISHED"])
    assert (r.status, r.publish_status) == ("QUOTA_EXHAUSTED", "quota_exhausted")
    assert (r.quota_usage, r.quota_total) == (250, 250)
    assert r.last_error and "250 of 250" in r.last_error
    assert sim.state.calls_for("9102").publish_calls == 0


async def test_ambiguous_timeout_is_settled_by_polling(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    # The publish goes through but the reply comes after our timeout: never publish again;
    # the next status check sees PUBLISHED.
    settings = pub_settings(settings, poll_max_seconds=6.0)
    sim.state.set_faults(slow_seconds=1.5)
    sim.state.set_publish_fault("9103", "timeout_after_publish")
    r = await publish_one(redis, settings, sim, "9103", ["FINISHED"])
    assert (r.status, r.publish_status) == ("PUBLISHED", "unconfirmed")
    assert r.media_id is None  # no documented way to learn it from the container
    calls = sim.state.calls_for("9103")
    assert (calls.publish_calls, calls.publishes) == (1, 1)


async def test_5xx_after_publish_is_not_retried(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings)
    sim.state.set_publish_fault("9104", "500_after_publish")
    r = await publish_one(redis, settings, sim, "9104", ["FINISHED"])
    assert r.status == "PUBLISHED"
    assert sim.state.calls_for("9104").publish_calls == 1


async def test_unconfirmed_and_never_published_times_out_without_a_second_call(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings, poll_max_seconds=1.5)
    sim.state.set_publish_fault("9105", "500")  # a 5xx: we cannot know it did nothing
    r = await publish_one(redis, settings, sim, "9105", ["FINISHED"])
    # Issue 14: PUBLISH_UNCONFIRMED (was TIMED_OUT), telling the operator to look first.
    assert (r.status, r.publish_status, r.last_api_status) == (
        "PUBLISH_UNCONFIRMED",
        "unconfirmed",
        "FINISHED",
    )
    assert r.last_error and "before reposting" in r.last_error
    calls = sim.state.calls_for("9105")
    assert (calls.publish_calls, calls.publishes) == (1, 0)
    assert calls.count >= 2  # it went back to checking the status


async def test_not_ready_is_retried_after_the_grace(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings)
    sim.state.set_publish_fault("9106", "not_ready", times=1)
    r = await publish_one(redis, settings, sim, "9106", ["FINISHED"])
    assert (r.status, r.publish_attempts) == ("PUBLISHED", 2)
    calls = sim.state.calls_for("9106")
    assert (calls.publish_calls, calls.publishes) == (2, 1)


async def test_not_ready_gives_up_after_max_attempts(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings, publish_max_attempts=2)
    sim.state.set_publish_fault("9107", "not_ready")
    r = await publish_one(redis, settings, sim, "9107", ["FINISHED"])
    # Issue 14: NEEDS_RECREATE (was PUBLISH_FAILED): only a new container can be published.
    assert (r.status, r.publish_status) == ("NEEDS_RECREATE", "needs_recreate")
    assert r.last_error_code == 24 and r.last_error_subcode == 4279009
    assert r.last_error and "create a new container" in r.last_error
    assert sim.state.calls_for("9107").publish_calls == 2


async def test_no_publish_unless_asked(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_script("9108", ["FINISHED"])
    await enqueue(redis, "9108", account=ACCOUNT, settings=settings)
    async with running_worker(settings):
        r = await final_of(redis, settings, "9108")
    assert r.status == "FINISHED" and r.publish_status is None
    assert sim.state.calls_for("9108").publish_calls == 0


async def test_never_two_publishes_with_two_workers_and_faults(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(
        settings, poll_max_seconds=5.0, http_timeout_seconds=0.5, job_timeout_seconds=2.0
    )
    sim.state.set_faults(rate=0.2, seed=7, slow_seconds=0.8)
    ids = [f"93{i:02d}" for i in range(40)]
    sim.state.set_script("93*", ["IN_PROGRESS", "FINISHED"])
    faults = ["timeout_after_publish", "500_after_publish", "500", "not_ready"]
    for i, cid in enumerate(ids[:20]):
        sim.state.set_publish_fault(cid, faults[i % 4], times=1)
    await enqueue_many(redis, ids, account=ACCOUNT, publish=True, settings=settings)
    async with running_worker(settings), running_worker(settings):
        results = [await final_of(redis, settings, cid, timeout=30) for cid in ids]
    for i, (cid, r) in enumerate(zip(ids, results, strict=True)):
        calls = sim.state.calls_for(cid)
        fault = faults[i % 4] if i < 20 else None
        # A second call only after an answer that proved nothing was published (not_ready).
        assert calls.publish_calls == (2 if fault == "not_ready" else 1), (cid, calls)
        if fault == "500":
            # Ambiguous and in fact not published: never published again, polled until the
            # window ended, and the result says the outcome is unknown.
            assert calls.publishes == 0, cid
            assert (r.status, r.publish_status) == ("PUBLISH_UNCONFIRMED", "unconfirmed"), (cid, r)
        else:
            assert calls.publishes == 1, cid
            assert r.status == "PUBLISHED", (cid, r.status, r.last_error)
            assert r.publish_status == (
                "unconfirmed"
                if fault in ("timeout_after_publish", "500_after_publish")
                else "published"
            ), (cid, r.publish_status)


async def test_worker_killed_mid_publish_does_not_publish_twice(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    settings = pub_settings(settings, poll_max_seconds=40.0)
    sim.state.set_faults(slow_seconds=1.5)
    sim.state.set_script("9401", ["FINISHED"])
    sim.state.set_publish_fault("9401", "timeout_after_publish")
    await enqueue(redis, "9401", account=ACCOUNT, publish=True, settings=settings)
    env = worker_env(
        project_env,
        settings,
        POLL_INTERVAL_SECONDS="0.2",
        POLL_MAX_SECONDS="40",
        HTTP_TIMEOUT_SECONDS="2",
        JOB_TIMEOUT_SECONDS="4",
        PUBLISH_GRACE_SECONDS="0.1",
        PUBLISH_MIN_AGE_SECONDS="0",
    )
    first = await start_worker(env, tmp_path / "w1.log")
    await wait_until(lambda: sim.state.calls_for("9401").publish_calls == 1, timeout=20)
    first.send_signal(signal.SIGKILL)  # mid-publish: the reply is still 1.5 s away
    await first.wait()
    r = await get_result(redis, "9401", settings=settings)
    assert r is not None and r.publish_status == "in_flight" and not r.final
    second = await start_worker(env, tmp_path / "w2.log")
    try:
        # The killed run's job is due again when its lease ends (JOB_TIMEOUT_SECONDS + 2 s).
        r = await final_of(redis, settings, "9401", timeout=40)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 15)
    assert (r.status, r.publish_status) == ("PUBLISHED", "unconfirmed")
    calls = sim.state.calls_for("9401")
    assert (calls.publish_calls, calls.publishes) == (1, 1)


async def test_a_re_poll_without_publish_keeps_the_memory_of_the_publish(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """Found by the lifecycle model: a forced re-poll without ``publish`` wiped the record that
    the container was published, so the next publish poll knew nothing of it (PUBLISHED without
    its media id; with a status that lagged, a second post)."""
    settings = pub_settings(settings)
    cid = "9120"
    first = await publish_one(redis, settings, sim, cid, ["FINISHED"])
    assert (first.status, first.publish_status) == ("PUBLISHED", "published")
    # Polled again without publish, then again with it.
    await enqueue(redis, cid, account=ACCOUNT, force=True, settings=settings)
    between = await get_result(redis, cid, settings=settings)
    assert between is not None and between.media_id == first.media_id
    assert await redis.hget(keys.result(cid), "earlier_publish") == b"published"  # type: ignore[misc]
    async with running_worker(settings):
        second = await final_of(redis, settings, cid)
    assert second.generation != first.generation
    await enqueue(redis, cid, account=ACCOUNT, publish=True, force=True, settings=settings)
    again = await get_result(redis, cid, settings=settings)
    assert again is not None and again.publish_status == "published"
    assert again.media_id == first.media_id
    async with running_worker(settings):
        third = await final_of(redis, settings, cid)
    assert (third.status, third.media_id) == ("PUBLISHED", first.media_id)
    assert sim.state.calls_for(cid).publish_calls == 1
