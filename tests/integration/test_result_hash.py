"""The result hash stores only fields that say something; a missing field reads as empty / 0 /
false, in Python and in every Lua script that reads the hash (issue: <= 1 KiB per queued
container)."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from api_client.errors import GraphAPIError
from api_client.policy import ErrorKind
from config import Settings
from worker import enqueue, get_result
from worker.client.producer import store_for
from worker.core.decisions import Decision
from worker.core.errors import failure_of
from worker.core.result import Changes, PollResult
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob, JobQueue

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests give webhooks before any worker has started: as a producer that holds the
    secret may (one without it is refused until a worker says it can sign)."""
    return settings.model_copy(update={"webhook_secret": SecretStr("s" * 24)})


ALWAYS = {
    "container_id",
    "status",
    "final",
    "enqueued_at",
    "deadline_at",
    "generation",
    "next_check_at",
}
STAMP = re.compile(r"\d+\.\d{3}")
HOOK = "https://hooks.example.com/threads?tenant=a"


async def claimed(redis: Redis, settings: Settings, keys: Keys) -> ClaimedJob:
    """Claim the one due job, as a worker would (the tests enqueue one container each)."""
    queue = JobQueue(redis, keys, job_ttl_seconds=settings.result_ttl_seconds)
    claim = await queue.claim("test-worker", limit=1, lease_ms=30_000)
    (job,) = claim.jobs
    return job


async def raw_hash(redis: Redis, keys: Keys, cid: str) -> dict[str, str]:
    h = await redis.hgetall(keys.result(cid))  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in h.items()}


def legacy_hash(h: dict[str, str]) -> dict[bytes | str, bytes | str]:
    """What enqueue.lua wrote before, for the same poll: all 34 fields, empty ones as "" or "0"."""
    at = h["enqueued_at"]
    return {
        "container_id": h["container_id"],
        "status": "QUEUED",
        "final": "0",
        "checks": "0",
        "error_message": "",
        "error_explanation": "",
        "last_api_status": "",
        "enqueued_at": at,
        "deadline_at": h["deadline_at"],
        "next_check_at": at,
        "last_checked_at": "",
        "finalized_at": "",
        "updated_at": at,
        "last_error": "",
        "last_error_kind": "",
        "last_error_code": "",
        "last_error_subcode": "",
        "last_error_fbtrace_id": "",
        "throttled": "0",
        "window_delay": "0",
        "last_throttled_at": "",
        "publish": h.get("publish", "0"),
        "publish_status": "",
        "publish_attempts": "0",
        "media_id": "",
        "published_at": "",
        "finished_at": "",
        "quota_usage": "",
        "quota_total": "",
        "webhook_url": h.get("webhook_url", ""),
        "webhook_status": "",
        "webhook_attempts": "0",
        "account": h.get("account", ""),
        "generation": h["generation"],
    }


async def test_fresh_enqueue_writes_only_the_fields_that_say_something(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    before = time.time()
    await enqueue(redis, "9101", settings=settings)
    h = await raw_hash(redis, keys, "9101")
    assert set(h) == ALWAYS
    assert (h["container_id"], h["status"], h["final"]) == ("9101", "QUEUED", "0")
    # Millisecond timestamps, still plain decimal seconds for any reader.
    assert STAMP.fullmatch(h["enqueued_at"]) and STAMP.fullmatch(h["deadline_at"])
    assert before - 0.001 <= float(h["enqueued_at"]) <= time.time()
    window = float(h["deadline_at"]) - float(h["enqueued_at"])
    assert window == pytest.approx(settings.poll_max_seconds, abs=1e-6)
    inflight = await redis.zscore(keys.inflight, "9101")
    assert inflight == pytest.approx(float(h["deadline_at"]))


async def test_optional_enqueue_fields_are_stored_only_when_given(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    await enqueue(redis, "9102", account="4242", publish=True, webhook_url=HOOK, settings=settings)
    h = await raw_hash(redis, keys, "9102")
    assert set(h) == ALWAYS | {"account", "publish", "webhook_url"}
    assert (h["account"], h["publish"], h["webhook_url"]) == ("4242", "1", HOOK)
    await enqueue(redis, "9103", publish=False, settings=settings)
    assert set(await raw_hash(redis, keys, "9103")) == ALWAYS


@pytest.mark.parametrize(
    "options",
    [{}, {"account": "4242", "publish": True, "webhook_url": HOOK}],
    ids=["plain", "account-publish-webhook"],
)
async def test_fresh_enqueue_reads_back_like_the_full_schema(
    redis: Redis, settings: Settings, keys: Keys, options: dict[str, object]
) -> None:
    await enqueue(redis, "9104", settings=settings, **options)  # type: ignore[arg-type]
    r = await get_result(redis, "9104", settings=settings)
    assert r is not None
    h = await raw_hash(redis, keys, "9104")
    enq, deadline = float(h["enqueued_at"]), float(h["deadline_at"])
    assert r.to_dict() == {
        "container_id": "9104",
        "status": "QUEUED",
        "final": False,
        "error_message": None,
        "error_explanation": None,
        "last_api_status": None,
        "checks": 0,
        "enqueued_at": enq,
        "deadline_at": deadline,
        "last_checked_at": None,
        "next_check_at": enq,  # the first check is due at once
        "finalized_at": None,
        "last_error": None,
        "last_error_kind": None,
        "last_error_code": None,
        "last_error_subcode": None,
        "last_error_fbtrace_id": None,
        "throttled": 0,
        "window_delay": 0.0,
        "last_throttled_at": None,
        "publish": bool(options.get("publish")),
        "publish_status": None,
        "publish_attempts": 0,
        "media_id": None,
        "published_at": None,
        "finished_at": None,
        "quota_usage": None,
        "quota_total": None,
        "webhook_url": options.get("webhook_url"),
        "webhook_status": None,
        "webhook_attempts": 0,
        "account": options.get("account"),
        "runs": 0,
        "strikes": 0,
        # Issue 14: replies and carousels (empty for a plain container).
        "reply_to": None,
        "children": [],
        "children_pending": 0,
        "children_ready_at": None,
        "failed_child": None,
        "failed_child_status": None,
        "failed_child_error": None,
        "carousel_parent": None,
        "reply_quota_usage": None,
        "reply_quota_total": None,
        "publish_note": None,
        # Issue 25: no platform field reads as threads (only another platform is stored).
        "platform": "threads",
        "error_code": None,
    }
    # Exactly what the old 34-field hash of the same poll reads as.
    assert r == PollResult.from_hash(legacy_hash(h))
    # And what a check's claim reads (claim.lua): the same poll, one run counted.
    job = await claimed(redis, settings, keys)
    assert job.state is not None and job.account.throttled_until == 0.0
    assert PollResult.from_hash(job.state) == dataclasses.replace(r, runs=1)


async def test_check_on_a_minimal_hash_records_status_checks_and_errors(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = store_for(redis, settings)
    await enqueue(redis, "9105", settings=settings)
    current = await store.load("9105")
    assert current is not None
    now = time.time()
    err = GraphAPIError(
        "An unexpected error has occurred.",
        code=2,
        subcode=99,
        error_type="OAuthException",
        fbtrace_id="AbCdEf",
        http_status=500,
    )
    decision = Decision(
        "IN_PROGRESS",
        False,
        now + 60,
        last_api_status="IN_PROGRESS",
        error=failure_of(err, ErrorKind.TRANSIENT),
        checks=current.checks + 1,
    )
    job = await claimed(redis, settings, keys)
    written = await store.record(job, current, decision, checked_at=now)
    assert (written.outcome, written.event_id) == ("ok", "")
    r = await store.load("9105")
    assert r is not None
    assert (r.status, r.final, r.checks) == ("IN_PROGRESS", False, 1)
    assert r.last_api_status == "IN_PROGRESS"
    assert r.last_error == str(err) and r.last_error_kind == "transient"
    assert (r.last_error_code, r.last_error_subcode, r.last_error_fbtrace_id) == (2, 99, "AbCdEf")
    assert r.error_message is None and r.error_explanation is None
    assert r.next_check_at == pytest.approx(now + 60, abs=0.002)
    assert r.last_checked_at == pytest.approx(now, abs=0.002)
    assert r.throttled == 0 and r.publish_status is None and r.webhook_status is None
    h = await raw_hash(redis, keys, "9105")
    assert "" not in h.values()  # an empty value is a missing field, never ""
    assert STAMP.fullmatch(h["next_check_at"]) and STAMP.fullmatch(h["updated_at"])

    # The final write: next_check_at goes away (it must not read as enqueued_at again).
    await redis.zadd(keys.queue, {job.job_id: 0})  # due now rather than in 60 s
    job = await claimed(redis, settings, keys)
    later = now + 61
    final = Decision(
        "ERROR",
        True,
        None,
        error_message="FAILED_DOWNLOADING_VIDEO",
        last_api_status="ERROR",
        checks=2,
    )
    written = await store.record(job, r, final, checked_at=later)
    assert written.outcome == "ok" and written.event_id
    done = await store.load("9105")
    assert done is not None
    assert (done.status, done.final, done.checks) == ("ERROR", True, 2)
    assert done.error_message == "FAILED_DOWNLOADING_VIDEO" and done.error_explanation
    assert done.next_check_at is None
    assert done.finalized_at == pytest.approx(time.time(), abs=2)  # Redis' clock
    assert "next_check_at" not in await raw_hash(redis, keys, "9105")
    assert await redis.zscore(keys.inflight, "9105") is None
    ((_, event),) = await redis.xrange(keys.events)
    assert event[b"status"] == b"ERROR" and event[b"checks"] == b"2"
    assert event[b"account"] == b"" and STAMP.fullmatch(event[b"finalized_at"].decode())
    # A repeat of the same write (its reply was lost) is answered as the write was, "ok", and
    # writes nothing more (no second event).
    again = await store.record(job, r, final, checked_at=later)
    assert (again.outcome, again.event_id, again.next_run_at) == ("ok", "", None)
    assert len(await redis.xrange(keys.events)) == 1


async def test_throttled_check_on_a_minimal_hash(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = store_for(redis, settings)
    await enqueue(redis, "9106", account="77", settings=settings)
    current = await store.load("9106")
    assert current is not None
    now = time.time()
    postponed = Decision("QUEUED", False, now + 5, spent=False, delay_added=2.5)
    job = await claimed(redis, settings, keys)
    assert (await store.record(job, current, postponed, checked_at=now)).outcome == "ok"
    r = await store.load("9106")
    assert r is not None
    assert (r.status, r.checks, r.throttled, r.window_delay) == ("QUEUED", 0, 1, 2.5)
    assert r.last_throttled_at == pytest.approx(now, abs=0.002)
    assert r.last_checked_at == pytest.approx(now, abs=0.002) and r.account == "77"
    await redis.zadd(keys.queue, {job.job_id: 0})
    job = await claimed(redis, settings, keys)
    assert (await store.record(job, r, postponed, checked_at=now)).outcome == "ok"
    again = await store.load("9106")
    assert again is not None and (again.throttled, again.window_delay) == (2, 5.0)


async def test_publish_claim_on_a_minimal_hash(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = store_for(redis, settings)
    await enqueue(redis, "9107", publish=True, settings=settings)
    current = await store.load("9107")
    assert current is not None
    # No publish_status yet (FINISHED not seen): nothing to claim.
    job = await claimed(redis, settings, keys)
    assert (await store.claim_publish(job, current, max_attempts=3)).outcome == ""
    now = time.time()
    seen = Decision("FINISHED", False, now, last_api_status="FINISHED", checks=1)
    changes = Changes(publish_status="pending", finished_at=now)
    await store.record(job, current, seen, checked_at=now, changes=changes)
    current = await store.load("9107")
    assert current is not None and current.publish_status == "pending"
    assert current.publish_attempts == 0
    # A run that no longer owns the poll cannot claim it.
    assert (await store.claim_publish(job, current, max_attempts=3)).outcome == "stale"
    job = await claimed(redis, settings, keys)
    assert (await store.claim_publish(job, current, max_attempts=3)).outcome == "ok"
    r = await store.load("9107")
    assert r is not None and (r.publish_status, r.publish_attempts) == ("in_flight", 1)
    # The same run again (its reply was lost): the same answer, and nothing counted twice.
    assert (await store.claim_publish(job, r, max_attempts=3)).outcome == "ok"
    r = await store.load("9107")
    assert r is not None and (r.publish_status, r.publish_attempts) == ("in_flight", 1)
    # Any other run finds the publish in flight.
    await redis.delete(f"arq:in-progress:{job.job_id}")
    await redis.zadd(keys.queue, {job.job_id: 0}, xx=True)
    other = await claimed(redis, settings, keys)
    assert (await store.claim_publish(other, r, max_attempts=3)).outcome == "in_flight"


async def test_final_state_creates_the_webhook_job_on_a_minimal_hash(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = store_for(redis, settings)
    await enqueue(redis, "9108", webhook_url=HOOK, settings=settings)
    current = await store.load("9108")
    assert current is not None and current.webhook_url == HOOK
    now = time.time()
    done = Decision("FINISHED", True, None, last_api_status="FINISHED", checks=1)
    job = await claimed(redis, settings, keys)
    hook = store.webhook_for(current, b"{}", int(now * 1000))
    written = await store.record(job, current, done, checked_at=now, webhook=hook)
    assert written.outcome == "ok"
    r = await store.load("9108")
    assert r is not None and (r.webhook_status, r.webhook_attempts) == ("pending", 0)
    job_id = keys.webhook_job_id("9108", current.generation)
    assert await redis.exists(JOBS.job_data(job_id))
    # In the deliveries' own queue (issue 22), never the checks'.
    assert await redis.zscore(keys.webhook_queue, job_id) is not None
    assert await redis.zscore(keys.queue, job_id) is None


async def test_forced_poll_starts_again_from_the_minimal_hash(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = store_for(redis, settings)
    await enqueue(redis, "9109", account="5", publish=True, webhook_url=HOOK, settings=settings)
    current = await store.load("9109")
    assert current is not None
    now = time.time()
    err = GraphAPIError("gone", code=100, subcode=33, http_status=400)
    failed = Decision("FAILED", True, None, error=failure_of(err), checks=1)
    job = await claimed(redis, settings, keys)
    await store.record(job, current, failed, checked_at=now)
    again = await enqueue(redis, "9109", force=True, settings=settings)
    assert (again.outcome, again.status) == ("restarted", "QUEUED")
    # Nothing of the previous poll survives: no error, no account, publish or webhook.
    assert set(await raw_hash(redis, keys, "9109")) == ALWAYS
    r = await store.load("9109")
    assert r is not None and r.last_error is None and r.checks == 0 and not r.publish
