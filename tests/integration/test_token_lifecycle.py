"""Token lifecycle on a real redis-server and the simulator's real HTTP refresh endpoint: a
token near expiry is refreshed exactly once by three concurrent keepers, a keeper frozen past
its lease is fenced, a failed refresh is retried with back-off, a token rejected with 190 marks
its account (polls fail at once, without API calls) until the file holds a new token. Tokens
never appear in a log line, an account view or Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import is_final, wait_until
from tests.helpers.worker import running_worker
from tests.leaks import dump_redis
from worker import enqueue_many, get_result
from worker.jobs.token_refresh import Refreshed, TokenKeeper
from worker.jobs.tokens import AccountTokenSource, fingerprint, write_atomically
from worker.ops import metrics
from worker.store.accounts import AccountStore
from worker.store.admin import AdminStore
from worker.store.keys import Keys
from worker.web.views import account_json

DAY = 86400.0
ACCOUNT = "4242"
OLD = "EAAoldTOKENnearEXPIRY0123456789"


async def redis_now(redis: Redis) -> float:
    s, us = await redis.time()
    return float(s) + float(us) / 1e6


def write_tokens(path: Path, data: object) -> None:
    write_atomically(path, json.dumps(data).encode())


def keeper(
    settings: Settings, redis: Redis, session: aiohttp.ClientSession, path: Path, owner: str
) -> TokenKeeper:
    tokens = AccountTokenSource(None, path, environ={}, recheck_seconds=1.0)
    return TokenKeeper(
        AccountStore(redis, Keys(settings.key_prefix)),
        tokens,
        session,
        settings,
        owner=owner,
    )


@pytest.fixture
def refresh_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "token_refresh": True,
            "token_refresh_margin_days": 10.0,
            "token_refresh_backoff_seconds": 0.3,
            "token_refresh_backoff_max_seconds": 0.5,
        }
    )


async def near_expiry_file(redis: Redis, tmp_path: Path) -> Path:
    now = await redis_now(redis)
    path = tmp_path / "tokens.json"
    write_tokens(
        path,
        {
            ACCOUNT: {"token": OLD, "expires_at": now + 5 * DAY, "issued_at": now - 55 * DAY},
            "5151": {"token": "EAAfreshTOKEN5151", "expires_at": now + 50 * DAY},
        },
    )
    return path


async def account_view(redis: Redis, settings: Settings) -> dict[str, object]:
    admin = AdminStore.from_settings(redis, settings)
    page = await admin.accounts()
    now = await admin.now()
    views = {v.account: account_json(v, now) for v in page.items}
    return views[ACCOUNT]


async def test_three_keepers_refresh_a_token_exactly_once(
    redis: Redis,
    refresh_settings: Settings,
    sim: RunningSimulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = refresh_settings
    sim.state.set_tokens(valid={OLD: ACCOUNT, "EAAfreshTOKEN5151": "5151"})
    path = await near_expiry_file(redis, tmp_path)
    await redis.zadd(Keys(settings.key_prefix).accounts, {ACCOUNT: await redis_now(redis)})
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        keepers = [keeper(settings, redis, session, path, f"w{i}") for i in range(3)]
        for _ in range(3):
            rounds = await asyncio.gather(*(k.refresh_due() for k in keepers))
        # Exactly one refresh call reached the API, for the token near expiry only.
        assert sim.state.refresh_calls == 1, rounds
    data = json.loads(path.read_text())
    new = data[ACCOUNT]["token"]
    assert new != OLD and new.startswith("refreshed-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert data["5151"] == {"token": "EAAfreshTOKEN5151", "expires_at": data["5151"]["expires_at"]}
    now = await redis_now(redis)
    # 60 days from the refresh, counted on Redis' clock.
    assert abs(data[ACCOUNT]["expires_at"] - (now + 60 * DAY)) < 5
    view = await account_view(redis, settings)
    assert view["token_refreshes"] == 1 and view["token_refresh_failures"] == 0
    assert abs(float(view["token_expires_in_s"]) - 60 * DAY) < 5  # type: ignore[arg-type]
    got = await metrics.sample(AdminStore.from_settings(redis, settings))
    assert abs(got.token_expiry[ACCOUNT] - 60 * DAY) < 5
    assert metrics.TOKEN_EXPIRES_IN.labels(account=ACCOUNT)._value.get() == pytest.approx(
        60 * DAY, abs=5
    )
    # The new token works against the API, and no token is in a log, the view or Redis.
    sim_calls = sim.state.requests
    assert [r.answer for r in sim_calls if r.kind == "refresh"] == ["ok"]
    everything = caplog.text + json.dumps(view) + repr(await dump_redis(redis))
    for token in (OLD, new, "EAAfreshTOKEN5151"):
        assert token not in everything


async def test_a_keeper_frozen_past_its_lease_is_fenced(
    redis: Redis, refresh_settings: Settings, sim: RunningSimulator, tmp_path: Path
) -> None:
    settings = refresh_settings
    path = await near_expiry_file(redis, tmp_path)
    async with aiohttp.ClientSession() as session:
        frozen = keeper(settings, redis, session, path, "frozen")
        other = keeper(settings, redis, session, path, "other")
        await frozen.sync()
        lease = await frozen.accounts.acquire_refresh(
            ACCOUNT, fingerprint(OLD), owner="frozen", lease_ms=150
        )
        assert not isinstance(lease, str)
        await asyncio.sleep(0.3)  # frozen: its lease runs out
        assert (await other.refresh_due())[ACCOUNT] == "refreshed"
        # The frozen one wakes with an answer of its own: the fence refuses its write-back.
        late = await frozen.write_back(lease, OLD, Refreshed("EAAstaleREFRESHED", 5_184_000))
    assert late == "fenced"
    token = json.loads(path.read_text())[ACCOUNT]["token"]
    assert token.startswith("refreshed-")
    assert sim.state.refresh_calls == 1


async def test_a_failed_refresh_is_retried_with_backoff(
    redis: Redis,
    refresh_settings: Settings,
    sim: RunningSimulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = refresh_settings
    sim.state.set_refresh(faults=["500", "500"])
    path = await near_expiry_file(redis, tmp_path)
    await redis.zadd(Keys(settings.key_prefix).accounts, {ACCOUNT: await redis_now(redis)})
    failed_before = metrics.TOKEN_REFRESHES.labels(outcome="failed")._value.get()
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        k = keeper(settings, redis, session, path, "w")
        assert (await k.refresh_due())[ACCOUNT] == "failed"
        view = await account_view(redis, settings)
        assert view["token_refresh_failures"] == 1
        assert "500" in str(view["token_refresh_error"]) or "HTTP" in str(
            view["token_refresh_error"]
        )
        first_wait = float(view["token_refresh_retry_at"]) - await redis_now(redis)  # type: ignore[arg-type]
        assert 0.1 < first_wait <= 0.31
        got = await metrics.sample(AdminStore.from_settings(redis, settings))
        assert got.token_refresh_failing == 1
        # Backing off: no call before the retry time.
        assert await k.refresh_due() == {}
        assert sim.state.refresh_calls == 1
        await asyncio.sleep(0.35)
        assert (await k.refresh_due())[ACCOUNT] == "failed"
        view = await account_view(redis, settings)
        second_wait = float(view["token_refresh_retry_at"]) - await redis_now(redis)  # type: ignore[arg-type]
        # Doubled, up to the cap (0.5 s).
        assert 0.35 < second_wait <= 0.51
        await asyncio.sleep(0.55)
        assert (await k.refresh_due())[ACCOUNT] == "refreshed"
    assert sim.state.refresh_calls == 3
    assert metrics.TOKEN_REFRESHES.labels(outcome="failed")._value.get() == failed_before + 2
    got = await metrics.sample(AdminStore.from_settings(redis, settings))
    assert got.token_refresh_failing == 0
    assert "token refresh failed" in caplog.text
    assert OLD not in caplog.text


async def test_an_expired_token_refused_by_the_refresh_marks_the_account(
    redis: Redis, refresh_settings: Settings, sim: RunningSimulator, tmp_path: Path
) -> None:
    settings = refresh_settings
    sim.state.set_tokens(valid={"EAAfreshTOKEN5151": "5151"}, expired={OLD: ACCOUNT})
    path = await near_expiry_file(redis, tmp_path)
    await redis.zadd(Keys(settings.key_prefix).accounts, {ACCOUNT: await redis_now(redis)})
    async with aiohttp.ClientSession() as session:
        k = keeper(settings, redis, session, path, "w")
        assert (await k.refresh_due())[ACCOUNT] == "rejected"
        # Marked: no second try for this token.
        assert await k.refresh_due() == {}
    view = await account_view(redis, settings)
    assert view["token_rejected"] is True and str(view["token_rejected_code"]).startswith("190")
    assert sim.state.refresh_calls == 1


async def test_a_token_rejected_with_190_fails_its_polls_at_once_until_replaced(
    redis: Redis, settings: Settings, sim: RunningSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    write_tokens(path, {ACCOUNT: OLD})
    sim.state.set_tokens(valid={"EAAnewTOKENforTHEaccount42": ACCOUNT}, expired={OLD: ACCOUNT})
    sim.state.set_default_script(["IN_PROGRESS", "FINISHED"])
    settings = settings.model_copy(
        update={"threads_tokens_file": path, "token_sync_seconds": 0.2, "poll_max_seconds": 3.0}
    )
    async with running_worker(settings):
        await enqueue_many(redis, ["77001"], account=ACCOUNT, settings=settings)

        await wait_until(lambda: is_final(redis, settings, "77001"), timeout=15)
        first = await get_result(redis, "77001", settings=settings)
        assert first is not None and first.status == "FAILED" and first.last_error_code == 190
        view = await account_view(redis, settings)
        assert view["token_rejected"] is True and str(view["token_rejected_code"]).startswith("190")
        # Marked: the next polls of the account fail at once, with a clear reason, no call.
        await enqueue_many(redis, ["77002", "77003"], account=ACCOUNT, settings=settings)
        await wait_until(lambda: is_final(redis, settings, "77002"), timeout=15)
        await wait_until(lambda: is_final(redis, settings, "77003"), timeout=15)
        for cid in ("77002", "77003"):
            r = await get_result(redis, cid, settings=settings)
            assert r is not None and r.status == "FAILED"
            assert "token was rejected" in (r.last_error or "")
            assert sim.state.calls_for(cid).count == 0
        # A new token in the file clears the mark, and polls work again.
        write_tokens(path, {ACCOUNT: "EAAnewTOKENforTHEaccount42"})

        async def cleared() -> bool:
            return (await account_view(redis, settings))["token_rejected"] is False

        await wait_until(cleared, timeout=10)
        await enqueue_many(redis, ["77004"], account=ACCOUNT, settings=settings)
        await wait_until(lambda: is_final(redis, settings, "77004"), timeout=15)
        ok = await get_result(redis, "77004", settings=settings)
        assert ok is not None and ok.status == "FINISHED"
