"""Issue 7: signed webhooks on final states, with retries and dead letters. Signatures are
verified with the maintained Standard Webhooks library (tests/webhook_verify.py); the rotation,
Node's library and the older scheme: test_standard_webhooks.py."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.receivers import webhook_receiver
from tests.helpers.waiting import is_final, wait_until
from tests.helpers.worker import running_worker
from tests.webhook_verify import verified, verifies
from worker import enqueue, get_result
from worker.core.errors import InvalidIdError
from worker.core.signing import standard_headers
from worker.store.keys import Keys

SECRET = "whsec-test-0123456789"


def hook_settings(settings: Settings, **more: object) -> Settings:
    update: dict[str, object] = {
        "webhook_secret": SecretStr(SECRET),
        "webhook_backoff_seconds": 0.1,
        "webhook_max_attempts": 3,
        # The receivers listen on loopback, which the SSRF guard refuses unless allowed.
        "webhook_allowed_hosts": "127.0.0.1",
    }
    update.update(more)
    return settings.model_copy(update=update)


async def test_signed_delivery_on_final_state(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = hook_settings(settings)
    sim.state.set_script("9501", ["IN_PROGRESS", "ERROR:INVALID_DURATION"])
    async with webhook_receiver([200]) as rec:
        await enqueue(redis, "9501", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):
            await wait_until(lambda: len(rec.got) == 1, timeout=10)
            await wait_until(lambda: _hook_status(redis, settings, "9501", "delivered"))
    body, headers = rec.got[0]
    assert verifies(SECRET, body, headers)
    assert not verifies("wrong-secret", body, headers)
    assert not verifies(SECRET, body + b" ", headers)
    data = verified(SECRET, body, headers)
    assert (data["container_id"], data["status"], data["error_message"]) == (
        "9501",
        "ERROR",
        "INVALID_DURATION",
    )
    assert data["final"] is True and data["finalized_at"] >= data["enqueued_at"]
    assert headers["X-Threads-Poller-Event"] == "container.final"
    r = await get_result(redis, "9501", settings=settings)
    assert r is not None and r.webhook_attempts == 1


async def _hook_status(redis: Redis, settings: Settings, cid: str, status: str) -> bool:
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.webhook_status == status


async def test_retry_then_success(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = hook_settings(settings)
    sim.state.set_script("9502", ["FINISHED"])
    async with webhook_receiver([500, 503, 200]) as rec:
        await enqueue(redis, "9502", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):
            await wait_until(lambda: _hook_status(redis, settings, "9502", "delivered"))
    assert len(rec.got) == 3
    # Each attempt is signed afresh; the body and the webhook-id are the same.
    assert len({b for b, _ in rec.got}) == 1
    assert len({h["webhook-id"] for _, h in rec.got}) == 1
    assert all(verifies(SECRET, b, h) for b, h in rec.got)
    assert await redis.xlen(keys.webhook_dead_letters) == 0


async def test_retry_then_dead_letter(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = hook_settings(settings)
    sim.state.set_script("9503", ["EXPIRED"])
    async with webhook_receiver([500]) as rec:
        await enqueue(redis, "9503", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):
            await wait_until(lambda: _hook_status(redis, settings, "9503", "dead"))
    assert len(rec.got) == 3
    ((_, dead),) = await redis.xrange(keys.webhook_dead_letters)
    assert dead[b"container_id"] == b"9503" and dead[b"reason"] == b"HTTP 500"
    assert dead[b"attempts"] == b"3" and dead[b"status"] == b"EXPIRED"


async def test_client_error_is_not_retried(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = hook_settings(settings)
    sim.state.set_script("9504", ["FINISHED"])
    async with webhook_receiver([410]) as rec:
        await enqueue(redis, "9504", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):
            await wait_until(lambda: _hook_status(redis, settings, "9504", "dead"))
    assert len(rec.got) == 1


async def test_default_url_from_settings_and_unreachable_receiver(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    from bench.harness import free_port

    settings = hook_settings(
        settings, webhook_url=f"http://127.0.0.1:{free_port()}/nobody", webhook_max_attempts=2
    )
    sim.state.set_script("9505", ["FINISHED"])
    await enqueue(redis, "9505", settings=settings)
    async with running_worker(settings):
        await wait_until(lambda: _hook_status(redis, settings, "9505", "dead"))
    ((_, dead),) = await redis.xrange(keys.webhook_dead_letters)
    assert b"Connect" in dead[b"reason"] and dead[b"attempts"] == b"2"


async def test_no_webhook_no_delivery_job(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("9506", ["FINISHED"])
    await enqueue(redis, "9506", settings=settings)
    async with running_worker(settings):
        await wait_until(lambda: is_final(redis, settings, "9506"))
    r = await get_result(redis, "9506", settings=settings)
    assert r is not None and r.final and r.webhook_status is None
    assert not [k async for k in redis.scan_iter(match=b"arq:job:*webhook*")]


@pytest.mark.parametrize("url", ["ftp://x/y", "not a url", "http://", "", "http://a b/"])
async def test_bad_webhook_url_is_refused(redis: Redis, settings: Settings, url: str) -> None:
    with pytest.raises(InvalidIdError, match="webhook url"):
        await enqueue(redis, "9507", webhook_url=url, settings=settings)
    assert await redis.dbsize() == 0


async def test_retries_follow_the_schedule_and_the_dead_letter_can_be_replayed(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """WEBHOOK_RETRY_SCHEDULE spaces the attempts; the dead letter keeps the exact body, which
    a replay signs afresh (the signature's timestamp would be stale)."""
    settings = hook_settings(
        settings,
        webhook_backoff_seconds=None,
        webhook_max_attempts=None,
        webhook_retry_schedule="0.4s,1s",
    )
    sim.state.set_script("9508", ["FINISHED"])
    async with webhook_receiver([503]) as rec:
        await enqueue(redis, "9508", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):
            await wait_until(lambda: _hook_status(redis, settings, "9508", "dead"), timeout=15)
    assert len(rec.got) == 3  # 1 + the schedule's 2 retries
    gaps = [b - a for a, b in itertools.pairwise(rec.at)]
    assert 0.4 <= gaps[0] < 1.0 and 1.0 <= gaps[1] < 1.8, gaps
    ((_, dead),) = await redis.xrange(keys.webhook_dead_letters)
    assert dead[b"attempts"] == b"3" and dead[b"reason"] == b"HTTP 503"
    body = dead[b"body"]
    assert {b for b, _ in rec.got} == {body}
    (secret,) = settings.webhook_signing_secrets()
    first = rec.got[0][1]
    msg_id = first["webhook-id"]
    # A stale signature is refused by the receiver's library; signed afresh (what a replay
    # does: tests/integration/test_standard_webhooks.py), the same id and body verify.
    stale = standard_headers([secret], msg_id, int(time.time()) - 400, body)
    assert not verifies(SECRET, body, stale)
    assert verifies(SECRET, body, standard_headers([secret], msg_id, int(time.time()), body))


@pytest.mark.parametrize("script", [["FINISHED"], ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"]])
async def test_the_body_carries_the_final_records_checks_and_last_checked_at(
    redis: Redis, settings: Settings, sim: RunningSimulator, script: list[str]
) -> None:
    """A first check that is final said last_checked_at null; a later one said the previous
    check's time. The body must say what the final record wrote."""
    settings = hook_settings(settings)
    sim.state.set_script("9531", script)
    async with webhook_receiver([200]) as rec:
        await enqueue(redis, "9531", webhook_url=rec.url, settings=settings)
        async with running_worker(settings):
            await wait_until(lambda: len(rec.got) == 1, timeout=10)
    data = json.loads(rec.got[0][0])
    r = await get_result(redis, "9531", settings=settings)
    assert r is not None and r.final and r.last_checked_at is not None
    assert (data["checks"], data["last_checked_at"]) == (r.checks, r.last_checked_at)
    assert data["checks"] == len(script)
    assert data["last_checked_at"] <= data["finalized_at"]
