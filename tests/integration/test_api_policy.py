"""Issue 3: each row of the error policy, throttling, pacing, concurrency and many accounts,
counted from the simulator's side."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import finals, wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, enqueue_many, get_result
from worker.store.accounts import AccountStore
from worker.store.keys import Keys

TOKEN_A = "EAAaccountAtokenAAAAAAAAAAAAAAAA1"
TOKEN_B = "EAAaccountBtokenBBBBBBBBBBBBBBBB2"


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_throttled_account_pauses_all_its_checks(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = settings.model_copy(
        update={"throttle_backoff_seconds": 1.0, "poll_max_seconds": 3.0}
    )
    sim.state.set_script("5001", ["throttle", "FINISHED"])
    sim.state.set_script("5002", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    await enqueue(redis, "5001", settings=settings)
    async with running_worker(settings):
        await asyncio.sleep(0.1)  # 5001 is checked (and throttled) first
        await enqueue(redis, "5002", settings=settings)
        r = await finals(redis, settings, ["5001", "5002"])
    throttled_at = next(q.t for q in sim.state.requests if q.answer.startswith("throttle"))
    others = [q.t for q in sim.state.requests if q.t > throttled_at]
    # Nothing for this account went out during the 1 s pause.
    assert min(others) - throttled_at >= 1.0 - 0.05
    assert r["5001"].status == "FINISHED" and r["5001"].throttled == 1
    assert r["5001"].last_error_kind == "throttled" and r["5001"].last_error_code == 4
    assert r["5002"].status == "FINISHED" and r["5002"].throttled >= 1
    assert r["5002"].checks == 3  # deferred, not spent
    state = await AccountStore(redis, keys).load("default")
    assert state.throttle_level == 0  # cleared by the next good answer


async def test_usage_headers_near_the_limit_slow_the_account_down(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = settings.model_copy(update={"throttle_backoff_seconds": 0.5})
    sim.state.set_usage_headers({"X-App-Usage": {"call_count": 95, "total_time": 10}})
    sim.state.set_script("5101", ["IN_PROGRESS", "FINISHED"])
    await enqueue(redis, "5101", settings=settings)
    async with running_worker(settings):
        r = await finals(redis, settings, ["5101"])
    assert r["5101"].status == "FINISHED"
    times = sim.state.calls_for("5101").times
    assert times[1] - times[0] >= 0.5 - 0.05  # the back-off, not the 0.2 s interval
    raw = await redis.hgetall(keys.account("default"))  # type: ignore[misc]
    assert raw[b"last_throttle_code"] == b"usage"
    assert int(raw[b"throttled_total"]) >= 1


async def test_expired_token_fails_its_account_once_other_account_unaffected(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({"111": TOKEN_A, "222": TOKEN_B}))
    tokens_file.chmod(0o600)  # a secrets file others may read is refused
    sim.state.set_tokens(valid={TOKEN_A: "111"}, expired={TOKEN_B: "222"})
    sim.state.set_script("61*", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("62*", ["IN_PROGRESS", "FINISHED"])
    settings = settings.model_copy(
        update={"threads_tokens_file": tokens_file, "threads_access_token": None}
    )
    a_ids = [f"61{i}" for i in range(5)]
    b_ids = [f"62{i}" for i in range(5)]
    await enqueue_many(redis, a_ids, account="111", settings=settings)
    await enqueue_many(redis, b_ids[:1], account="222", settings=settings)
    caplog.set_level(logging.INFO)
    async with running_worker(settings):
        await finals(redis, settings, b_ids[:1])
        await enqueue_many(redis, b_ids[1:], account="222", settings=settings)
        r = await finals(redis, settings, a_ids + b_ids)
    assert all(r[c].status == "FINISHED" for c in a_ids)
    assert all(r[c].status == "FAILED" for c in b_ids)
    first = r[b_ids[0]]
    assert (first.last_error_code, first.last_error_subcode) == (190, 463)
    assert first.last_error and "THREADS_TOKENS_FILE" in first.last_error
    # Only the first container of account 222 reached the API; the rest failed without a call.
    b_calls = [q for q in sim.state.requests if q.kind == "status" and q.id.startswith("62")]
    assert len(b_calls) == 1
    assert all(r[c].checks == 0 for c in b_ids[1:])
    # Logged once per rejected token, not once per container: 5 containers of account 222
    # failed on that token, in two batches; account 111's token was never rejected.
    alerts = token_alerts(caplog)
    assert len(alerts) == 1, [rec.getMessage() for rec in alerts]
    alert = alerts[0]
    assert alert.levelno == logging.ERROR
    assert getattr(alert, "account", None) == "222"
    assert "THREADS_TOKENS_FILE" in alert.getMessage()  # says what to do about it
    assert TOKEN_B not in alert.getMessage() and TOKEN_B not in str(getattr(alert, "error", ""))
    # Which account the simulator saw for each call: tokens were not mixed up.
    assert {q.account for q in sim.state.requests if q.id.startswith("61")} == {"111"}

    # The pipeline refreshes the token: checks of that account resume.
    fresh = "EAAaccountBrefreshedCCCCCCCCCCC3"
    sim.state.set_tokens(valid={TOKEN_A: "111", fresh: "222"}, expired={TOKEN_B: "222"})
    tokens_file.write_text(json.dumps({"111": TOKEN_A, "222": fresh}))
    import os
    import time

    os.utime(tokens_file, (time.time() + 5, time.time() + 5))  # a new mtime, whatever the clock
    async with running_worker(settings):
        await enqueue(redis, b_ids[1], account="222", force=True, settings=settings)
        await wait_until(lambda: _status_is(redis, settings, b_ids[1], "FINISHED"), timeout=10)
    # The refreshed token was accepted: no second alert.
    assert len(token_alerts(caplog)) == 1


def token_alerts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if "access token rejected" in rec.getMessage()]


async def test_concurrent_rejections_of_one_token_are_logged_once(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({"222": TOKEN_B}))
    tokens_file.chmod(0o600)
    sim.state.set_tokens(valid={}, expired={TOKEN_B: "222"})
    settings = settings.model_copy(
        update={"threads_tokens_file": tokens_file, "threads_access_token": None}
    )
    ids = [f"64{i}" for i in range(8)]
    # All due before the worker starts: their first checks run at once, and several reach the
    # API (and are rejected) before the first rejection is recorded.
    await enqueue_many(redis, ids, account="222", settings=settings)
    caplog.set_level(logging.INFO)
    async with running_worker(settings):
        r = await finals(redis, settings, ids)
    assert all(r[c].status == "FAILED" and r[c].last_error_kind == "token" for c in ids)
    calls = [q for q in sim.state.requests if q.kind == "status" and q.id.startswith("64")]
    assert calls  # at least one rejection came from the API
    alerts = token_alerts(caplog)
    assert len(alerts) == 1, (len(calls), [rec.getMessage() for rec in alerts])
    assert getattr(alerts[0], "account", None) == "222"


async def _status_is(redis: Redis, settings: Settings, cid: str, status: str) -> bool:
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.status == status


async def test_missing_token_for_account_is_failed_with_hint(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = settings.model_copy(update={"threads_access_token": None})
    await enqueue(redis, "6301", account="333", settings=settings)
    async with running_worker(settings):
        r = await finals(redis, settings, ["6301"])
    assert r["6301"].status == "FAILED" and r["6301"].last_error_kind == "token"
    assert r["6301"].last_error and "THREADS_ACCESS_TOKEN_333" in r["6301"].last_error
    assert sim.state.total_calls == 0


async def test_per_account_rate_cap(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = settings.model_copy(
        update={"account_max_requests_per_second": 5.0, "poll_max_seconds": 30.0}
    )
    sim.state.set_script("71*", ["FINISHED"])
    sim.state.set_script("72*", ["FINISHED"])
    a = [f"71{i:02d}" for i in range(15)]
    b = [f"72{i:02d}" for i in range(15)]
    await enqueue_many(redis, a, account="1", settings=settings)
    await enqueue_many(redis, b, account="2", settings=settings)
    async with running_worker(settings):
        await finals(redis, settings, a + b)
    for prefix in ("71", "72"):
        times = [q.t for q in sim.state.requests if q.id.startswith(prefix)]
        assert len(times) == 15
        # Pacing slots of 1/rate s, one request each: at most rate + 1 in any one-second window,
        # and 15 requests span at least 13 slots (the first is taken where it fell in its slot).
        # (+1 more when a late worker fires two due slots together on a loaded machine.)
        assert max_in_window(times) <= 7, sorted(times)
        assert max(times) - min(times) >= 13 / 5 - 0.05
    # The two accounts were paced independently (both done in about the time of one).
    all_times = [q.t for q in sim.state.requests]
    assert max(all_times) - min(all_times) < 2 * 14 / 5


async def test_concurrency_cap(redis: Redis, settings: Settings, sim: RunningSimulator) -> None:
    settings = settings.model_copy(
        update={"api_max_concurrency": 2, "poll_max_seconds": 30.0, "http_timeout_seconds": 2.0}
    )
    sim.state.set_script("73*", ["slow:0.3:FINISHED"])
    ids = [f"73{i:02d}" for i in range(10)]
    await enqueue_many(redis, ids, settings=settings)
    async with running_worker(settings):
        await finals(redis, settings, ids)
    times = sorted(q.t for q in sim.state.requests)
    # 10 requests of 0.3 s through 2 slots: arrivals spread over at least 4 x 0.3 s.
    assert times[-1] - times[0] >= 4 * 0.3 - 0.05
    assert max_in_window(times, 0.25) <= 2
