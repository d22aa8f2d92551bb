"""PollerClient against a real Redis: enqueue, read, wait, and the connection it owns."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from worker import InvalidIdError, PollerClient, PollResult, is_success
from worker.store.keys import Keys


def window_of(r: PollResult | None) -> float:
    assert r is not None and r.deadline_at is not None and r.enqueued_at is not None
    return r.deadline_at - r.enqueued_at


async def test_enqueue_then_get(redis: Redis, settings: Settings, keys: Keys) -> None:
    client = PollerClient.from_settings(settings, redis)
    out = await client.enqueue(" 8501 ", account="4242")  # surrounding spaces are trimmed
    assert (out.container_id, out.outcome, out.status) == ("8501", "enqueued", "QUEUED")
    r = await client.get("8501")
    assert r is not None and r.status == "QUEUED" and not r.final and r.account == "4242"
    assert window_of(r) == pytest.approx(settings.poll_max_seconds, abs=0.002)
    assert await redis.zcard(keys.queue) == 1
    again = await client.enqueue("8501")
    assert (again.outcome, again.status) == ("duplicate", "QUEUED")
    assert await redis.zcard(keys.queue) == 1  # no second job


async def test_enqueue_many_folds_repeats_and_keeps_order(redis: Redis, settings: Settings) -> None:
    client = PollerClient.from_settings(settings, redis)
    outs = await client.enqueue_many(["8512", "8511", "8512", " 8511", "8513"])
    assert [(o.container_id, o.outcome) for o in outs] == [
        ("8512", "enqueued"),
        ("8511", "enqueued"),
        ("8513", "enqueued"),
    ]
    again = await client.enqueue_many(["8513", "8514"])
    assert [(o.container_id, o.outcome) for o in again] == [
        ("8513", "duplicate"),
        ("8514", "enqueued"),
    ]
    assert await client.enqueue_many([]) == []


async def test_a_bad_id_in_a_batch_writes_nothing(redis: Redis, settings: Settings) -> None:
    client = PollerClient.from_settings(settings, redis)
    with pytest.raises(InvalidIdError, match="digits only"):
        await client.enqueue_many(["8521", "85x2"])
    with pytest.raises(InvalidIdError, match="not one string"):
        await client.enqueue_many("8521")
    with pytest.raises(InvalidIdError, match="webhook url"):
        await client.enqueue("8521", webhook_url="ftp://example.com/hook")
    assert await redis.dbsize() == 0


async def test_the_window_is_the_clients_or_the_calls(
    redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The producer's environment plays no part: only the client's options and the call's.
    monkeypatch.setenv("POLL_MAX_SECONDS", "17")
    plain = PollerClient(redis, key_prefix=settings.key_prefix)
    await plain.enqueue("8531")
    assert window_of(await plain.get("8531")) == pytest.approx(300.0, abs=0.002)

    client = PollerClient(redis, key_prefix=settings.key_prefix, window_seconds=42.0)
    assert client.window_seconds == 42.0
    await client.enqueue("8532")
    await client.enqueue_many(["8533", "8534"], window_seconds=7.5)
    got = await client.get_many(["8532", "8533", "8534"])
    assert [round(window_of(r), 3) for r in got] == [42.0, 7.5, 7.5]


@pytest.mark.parametrize("window", [-1.0, float("nan"), float("inf"), 86401.0])
async def test_a_bad_window_is_refused_before_anything_is_written(
    redis: Redis, settings: Settings, window: float
) -> None:
    client = PollerClient.from_settings(settings, redis)
    with pytest.raises(ValueError, match="window_seconds"):
        await client.enqueue("8541", window_seconds=window)
    with pytest.raises(ValueError, match="window_seconds"):
        PollerClient(redis, window_seconds=window)
    with pytest.raises(ValueError, match="shorter than result_ttl_seconds"):
        PollerClient(redis, window_seconds=600, result_ttl_seconds=600)
    assert await redis.dbsize() == 0


async def test_the_calls_window_reaches_the_worker(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    # The worker's own POLL_MAX_SECONDS (1 s here) would allow about six checks; the poll's
    # window, fixed at enqueue, allows one.
    sim.state.set_script("8551", ["IN_PROGRESS"])
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue("8551", window_seconds=0.0)
    async with running_worker(settings):
        r = await client.wait("8551", timeout=10)
    assert r is not None and r.status == "TIMED_OUT" and r.checks == 1
    assert sim.state.calls_for("8551").count == 1


async def test_get_and_get_many(redis: Redis, settings: Settings) -> None:
    client = PollerClient.from_settings(settings, redis)
    assert await client.get("8561") is None
    await client.enqueue_many(["8561", "8562"])
    got = await client.get_many(["8562", "8569", "8561", "8562"])
    assert [r.container_id if r else None for r in got] == ["8562", None, "8561", "8562"]
    assert await client.get_many([]) == []
    with pytest.raises(InvalidIdError):
        await client.get("not-an-id")
    with pytest.raises(InvalidIdError):
        await client.get_many(["8561", ""])
    with pytest.raises(InvalidIdError, match="not one string"):
        await client.get_many("8561")


async def test_wait_returns_once_final(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_script("8571", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue("8571")
    async with running_worker(settings):
        t0 = time.monotonic()
        r = await client.wait("8571", timeout=20)
        waited = time.monotonic() - t0
    assert r is not None and r.final and r.status == "FINISHED" and is_success(r.status)
    assert r.checks == 3
    assert waited < 5  # woken by the event, not by the timeout
    # Already final: no waiting at all.
    t0 = time.monotonic()
    again = await client.wait("8571", timeout=20)
    assert again == r and time.monotonic() - t0 < 0.5


async def test_wait_gives_up_after_the_timeout(redis: Redis, settings: Settings) -> None:
    client = PollerClient.from_settings(settings, redis)  # no worker runs
    await client.enqueue("8581")
    t0 = time.monotonic()
    r = await client.wait("8581", timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2
    assert r is not None and r.status == "QUEUED" and not r.final
    assert await client.wait("8589", timeout=0) is None  # unknown: looked once
    with pytest.raises(InvalidIdError):
        await client.wait("85 89", timeout=0)


async def _clients(redis: Redis) -> int:
    return len(await redis.client_list())


async def _closed(redis: Redis, count: int) -> bool:
    return await _clients(redis) == count


async def test_from_settings_opens_and_closes_its_own_connection(
    redis: Redis, settings: Settings
) -> None:
    await redis.ping()
    before = await _clients(redis)
    async with PollerClient.from_settings(settings) as client:
        assert client.redis is not redis and client.key_prefix == settings.key_prefix
        assert client.window_seconds == settings.poll_max_seconds
        await client.enqueue("8591")
        assert await _clients(redis) == before + 1
    await wait_until(lambda: _closed(redis, before), timeout=5)
    # The write went to the deployment's Redis, under its prefix.
    stored = await PollerClient.from_settings(settings, redis).get("8591")
    assert stored is not None and stored.status == "QUEUED"

    client = PollerClient.from_settings(settings)
    await client.get("8591")
    await client.aclose()
    await client.aclose()  # twice is harmless
    await wait_until(lambda: _closed(redis, before), timeout=5)


async def test_a_given_redis_is_left_open(redis: Redis, settings: Settings) -> None:
    async with PollerClient.from_settings(settings, redis) as client:
        assert client.redis is redis
        await client.enqueue("8595")
    await client.aclose()
    assert await redis.ping()  # still usable
    async with PollerClient(redis) as plain:
        await plain.get("8595")
    assert await redis.ping()
