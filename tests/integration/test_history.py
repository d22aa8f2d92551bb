"""Issue 23: every container's story. Real worker, real Redis, the simulator: the history the
scripts write (checks, errors, throttle pauses, publish, webhooks, cancel, final), its cap, its
TTL, and its three doors (HTTP, CLI, Python client)."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.receivers import webhook_receiver
from tests.helpers.waiting import final_of, wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_poll_states import poll_all
from tests.integration.test_publish import ACCOUNT, pub_settings
from tests.integration.test_webhooks import hook_settings
from tests.web_helpers import RO_KEY, RW_KEY, running_api
from worker import PollerClient, enqueue, get_history
from worker.core.history import MAX_BYTES, EventKind, HistoryEvent, checks_of_last_poll
from worker.store.admin import AdminStore, CancelOutcome
from worker.store.keys import Keys
from worker.store.results import ResultStore


def kinds(events: list[HistoryEvent]) -> list[str]:
    return [str(e.kind) for e in events]


async def assert_same_ttl(redis: Redis, keys: Keys, cid: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.pttl(keys.result(cid))
        pipe.pttl(keys.history(cid))
        result_ttl, history_ttl = await pipe.execute()
    assert result_ttl > 0
    # Set by the same script to the same value; read in one MULTI.
    assert abs(result_ttl - history_ttl) <= 2, (result_ttl, history_ttl)


async def test_checks_errors_throttle_and_final(
    redis: Redis, settings: Settings, keys: Keys, sim: RunningSimulator
) -> None:
    r = (await poll_all(redis, settings, {"7101": ["IN_PROGRESS", "throttle", "permission"]}, sim))[
        "7101"
    ]
    assert r.status == "FAILED"
    events = await get_history(redis, "7101", settings=settings)
    assert kinds(events) == ["enqueued", "check", "throttled", "check", "final"]
    started, first, paused, failed, final = events
    assert started.outcome == "enqueued"
    assert (first.status, first.error_kind) == ("IN_PROGRESS", None)
    assert first.latency_ms is not None and 0 <= first.latency_ms < 2000
    # The throttled answer: its code, the account's pause, and no check spent.
    assert (paused.error_kind, paused.error_code) == ("throttled", 4)
    assert paused.wait_ms is not None and paused.wait_ms > 0 and paused.latency_ms is not None
    # The error that ended it: the Graph code and fbtrace_id, as the result hash has them.
    assert (failed.status, failed.error_kind, failed.error_code) == ("", "permission", 10)
    assert failed.fbtrace_id and failed.fbtrace_id == r.last_error_fbtrace_id
    assert (final.status, final.checks) == ("FAILED", r.checks)
    assert checks_of_last_poll(events) == r.checks == 2
    # Redis' clock, in order, within the poll's lifetime.
    times = [e.at for e in events]
    assert times == sorted(times)
    assert r.enqueued_at is not None and r.finalized_at is not None
    assert abs(times[0] - r.enqueued_at) < 0.002 and abs(times[-1] - r.finalized_at) < 0.002
    await assert_same_ttl(redis, keys, "7101")


async def test_a_six_check_poll_costs_less_than_400_bytes(
    redis: Redis, settings: Settings, keys: Keys, sim: RunningSimulator
) -> None:
    r = (await poll_all(redis, settings, {"7102": ["IN_PROGRESS"]}, sim))["7102"]
    assert (r.status, r.checks) == ("TIMED_OUT", 6)
    events = await get_history(redis, "7102", settings=settings)
    assert kinds(events) == ["enqueued", *["check"] * 6, "final"]
    used = await redis.memory_usage(keys.history("7102"))
    assert used is not None and used <= 400, used


async def test_publish_and_webhook_attempts(
    redis: Redis, settings: Settings, keys: Keys, sim: RunningSimulator
) -> None:
    s = hook_settings(pub_settings(settings))
    sim.state.set_script("7201", ["FINISHED"])
    async with webhook_receiver([500, 200]) as rec, running_worker(s):
        await enqueue(redis, "7201", account=ACCOUNT, publish=True, webhook_url=rec.url, settings=s)
        r = await final_of(redis, s, "7201")

        async def delivered() -> bool:
            events = await get_history(redis, "7201", settings=s)
            return any(e.kind is EventKind.WEBHOOK and e.outcome == "delivered" for e in events)

        await wait_until(delivered, timeout=15)
    assert r.status == "PUBLISHED" and r.media_id
    events = await get_history(redis, "7201", settings=s)
    assert kinds(events) == [
        "enqueued",
        "check",
        "publish_claimed",
        "publish",
        "final",
        "webhook",
        "webhook",
    ]
    _, check, claimed, answer, final, retry, ok = events
    assert check.status == "FINISHED" and claimed.attempt == 1
    assert (answer.outcome, answer.media_id) == ("published", r.media_id)
    assert answer.latency_ms is not None
    assert final.status == "PUBLISHED"
    assert (retry.outcome, retry.attempt) == ("retry", 1) and retry.detail and "500" in retry.detail
    assert (ok.outcome, ok.attempt) == ("delivered", 2)
    # The settle reads the hash's own TTL: the two still expire together.
    await assert_same_ttl(redis, keys, "7201")


async def test_cancel_and_restart_are_in_the_story(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = ResultStore.from_settings(redis, settings)
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue("7301")
    done = await AdminStore(store).cancel("7301", reason="wrong video")
    assert done.outcome is CancelOutcome.CANCELLED
    await client.enqueue("7301", force=True)
    events = await client.history("7301")
    assert kinds(events) == ["enqueued", "cancelled", "enqueued"]
    assert events[1].status == "CANCELLED" and events[1].detail == "cancelled: wrong video"
    assert events[2].outcome == "restarted"
    await assert_same_ttl(redis, keys, "7301")


async def test_the_history_keeps_its_newest_entries_whole(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    # A long story already there (as a poll throttled for hours would leave): 80 old entries,
    # more than the cap.
    old = "\n".join(f"cl8abc{i:03d}|P|{i}" for i in range(80))
    assert len(old) > MAX_BYTES
    await redis.set(keys.history("7401"), old)
    await PollerClient.from_settings(settings, redis).enqueue("7401")
    raw = await redis.get(keys.history("7401"))
    assert raw is not None and MAX_BYTES - 20 < len(raw) <= MAX_BYTES
    events = await get_history(redis, "7401", settings=settings)
    # The oldest dropped, whole entries kept, the newest (the enqueue) last.
    assert events[-1].kind is EventKind.ENQUEUED
    assert all(e.kind is EventKind.CHECK for e in events[:-1])
    kept = len(events) - 1
    assert 0 < kept < 80
    assert [e.latency_ms for e in events[:-1]] == list(range(80 - kept, 80))


async def test_http_route_cli_and_scope(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
) -> None:
    await poll_all(redis, settings, {"7501": ["IN_PROGRESS", "FINISHED"]}, sim)
    async with running_api(settings) as api:
        got = await api.get("/v1/containers/7501/history", key=RO_KEY)
        assert got.status == 200
        assert [e["kind"] for e in got.body["events"]] == ["enqueued", "check", "check", "final"]
        assert got.body["events"][1]["status"] == "IN_PROGRESS"
        assert "latency_ms" in got.body["events"][1] and "error_code" not in got.body["events"][1]
        # As GET /v1/containers/{id}: unknown is 404, a malformed id 422, no key 401.
        for path, status in [
            ("/v1/containers/7599/history", 404),
            ("/v1/containers/12x/history", 422),
        ]:
            assert (await api.get(path, key=RW_KEY)).status == status
            container = path.removesuffix("/history")
            assert (await api.get(container, key=RW_KEY)).status == status
        assert (await api.get("/v1/containers/7501/history", key=None)).status == 401

    env = dict(project_env, POLL_INTERVAL_SECONDS="0.2", POLL_MAX_SECONDS="1")
    code, out, err = await run_cli("history", "7501", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "EVENT", "DETAIL"]
    assert [line.split()[2] for line in lines[1:]] == ["enqueued", "check", "check", "final"]
    assert "FINISHED, 2 checks" in lines[-1] and " ms" in lines[2]
    code, out, err = await run_cli("history", "7501", "--json", env=env)
    assert code == 0, err
    data = json.loads(out)
    assert data["container_id"] == "7501" and data["events"][-1]["checks"] == 2
    code, _, err = await run_cli("history", "7599", env=env)
    assert code == 1 and "unknown id 7599" in err
