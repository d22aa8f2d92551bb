"""Issue 25: Instagram containers beside Threads ones, the real worker against the simulator's
Instagram routes (``/v23.0``: ``status_code``/``status``, ``content_publishing_limit``,
``media_publish``) on a real redis-server.

Every Instagram outcome: FINISHED, ERROR with its subcode read out of the text, EXPIRED,
TIMED_OUT, auto-publish once (PUBLISHED), the publish refusals (2207020 expired, 2207042 daily
limit, 2207051 spam, a quota read as used up), business-use-case throttling, carousels of 10,
a token past expiry, a token near expiry refreshed once by three keepers with Instagram's grant.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.env import worker_env
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import finals
from tests.helpers.worker import running_worker
from worker import InvalidIdError, enqueue, enqueue_many
from worker.client.producer import enqueue_carousel
from worker.jobs.token_refresh import TokenKeeper
from worker.jobs.tokens import AccountTokenSource, write_atomically
from worker.store.accounts import AccountStore
from worker.store.admin import AccountView, AdminStore
from worker.store.keys import Keys

IG = "instagram"
IG_USER = "17841400000000001"
IG_ACCOUNT = f"instagram:{IG_USER}"
THREADS_USER = "4242"
DAY = 86400.0
IG_TOKEN = "IGQWRtestTOKEN0123456789"


@pytest.fixture
def ig_settings(settings: Settings, sim: RunningSimulator) -> Settings:
    return settings.model_copy(
        update={
            "instagram_api_base_url": sim.instagram_url,
            "instagram_access_token": SecretStr(IG_TOKEN),
            "publish_grace_seconds": 0.1,
            "poll_max_seconds": 3.0,
            "publish_min_age_seconds": 0.0,
        }
    )


async def account_views(redis: Redis, settings: Settings) -> dict[str, AccountView]:
    page = await AdminStore.from_settings(redis, settings).accounts()
    return {v.account: v for v in page.items}


async def test_every_instagram_status_beside_threads_containers(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = ig_settings.model_copy(update={"poll_max_seconds": 1.0})
    scripts = {
        "8101": ["IN_PROGRESS", "FINISHED"],
        "8102": ["IN_PROGRESS", "ERROR:2207026"],
        "8103": ["EXPIRED"],
        "8104": ["IN_PROGRESS"],
        "8105": ["ERROR"],
    }
    threads = {"8201": ["FINISHED"], "8202": ["ERROR:FAILED_DOWNLOADING_VIDEO"]}
    for cid, steps in {**scripts, **threads}.items():
        sim.state.set_script(cid, steps)
    await enqueue_many(redis, list(scripts), account=IG_USER, platform=IG, settings=settings)
    await enqueue_many(redis, list(threads), account=THREADS_USER, settings=settings)
    async with running_worker(settings):
        got = await finals(redis, settings, [*scripts, *threads])
    assert {cid: r.status for cid, r in got.items()} == {
        "8101": "FINISHED",
        "8102": "ERROR",
        "8103": "EXPIRED",
        "8104": "TIMED_OUT",
        "8105": "ERROR",
        "8201": "FINISHED",
        "8202": "ERROR",
    }
    err = got["8102"]
    # The text kept as Instagram sends it, the subcode read out of it, what it means.
    assert err.error_message == "Error: Media upload has failed with error code 2207026"
    assert err.to_dict()["error_code"] == 2207026
    assert err.error_explanation and "video" in err.error_explanation
    assert got["8105"].to_dict()["error_code"] == 2207053
    assert got["8202"].to_dict()["error_code"] is None
    assert got["8202"].error_explanation and "download" in got["8202"].error_explanation
    for cid in scripts:
        assert (got[cid].platform, got[cid].account) == (IG, IG_ACCOUNT)
        assert set(sim.state.calls_for(cid).platforms) == {IG}
    for cid in threads:
        assert (got[cid].platform, got[cid].account) == ("threads", THREADS_USER)
        assert set(sim.state.calls_for(cid).platforms) <= {"threads"}
    # Final events and history say the platform too.
    events = {e[b"container_id"].decode(): e for _, e in await redis.xrange(keys.events)}
    assert events["8101"][b"platform"] == b"instagram"
    assert events["8201"][b"platform"] == b"threads"
    history = await redis.get(keys.history("8101"))
    assert history is not None and b"instagram" in history.split(b"\n")[0]


async def test_instagram_auto_publish_once_reads_the_quota_it_is_given(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_ig_quota(IG_USER, quota_usage=10, quota_total=50)
    sim.state.set_script("8301", ["IN_PROGRESS", "FINISHED"])
    await enqueue(redis, "8301", account=IG_USER, platform=IG, publish=True, settings=ig_settings)
    async with running_worker(ig_settings):
        r = (await finals(redis, ig_settings, ["8301"]))["8301"]
    assert (r.status, r.publish_status) == ("PUBLISHED", "published")
    assert r.media_id and r.media_id == sim.state.published_media_id("8301")
    # config.quota_total, never a hard-coded 50 or 100.
    assert (r.quota_usage, r.quota_total) == (10, 50)
    calls = sim.state.calls_for("8301")
    assert (calls.publish_calls, calls.publishes) == (1, 1)
    published = [q for q in sim.state.requests if q.kind == "publish"]
    assert [q.platform for q in published] == [IG]


@pytest.mark.parametrize(
    ("fault", "status", "publish_status"),
    [
        ("ig_expired", "EXPIRED", "needs_recreate"),
        ("ig_daily_limit", "QUOTA_EXHAUSTED", "quota_exhausted"),
        ("ig_spam", "PUBLISH_FAILED", "failed"),
    ],
)
async def test_instagram_publish_refusals_end_once_without_a_second_call(
    redis: Redis,
    ig_settings: Settings,
    sim: RunningSimulator,
    fault: str,
    status: str,
    publish_status: str,
) -> None:
    cid = {"ig_expired": "8401", "ig_daily_limit": "8402", "ig_spam": "8403"}[fault]
    sim.state.set_script(cid, ["FINISHED"])
    sim.state.set_publish_fault(cid, fault)
    await enqueue(redis, cid, account=IG_USER, platform=IG, publish=True, settings=ig_settings)
    async with running_worker(ig_settings):
        r = (await finals(redis, ig_settings, [cid]))[cid]
    assert (r.status, r.publish_status) == (status, publish_status)
    calls = sim.state.calls_for(cid)
    # Each answer proves nothing went out; none of them is worth a second call.
    assert (calls.publish_calls, calls.publishes) == (1, 0)
    if fault == "ig_spam":
        # 4/2207051 is a restriction, not throttling: no pause, no retry.
        assert r.last_error_kind == "restricted"
        assert r.last_error_subcode == 2207051
    if fault == "ig_expired":
        assert r.last_error and "create a new container" in r.last_error


async def test_an_instagram_quota_used_up_is_not_published(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_ig_quota(IG_USER, quota_usage=50, quota_total=50)
    sim.state.set_script("8501", ["FINISHED"])
    await enqueue(redis, "8501", account=IG_USER, platform=IG, publish=True, settings=ig_settings)
    async with running_worker(ig_settings):
        r = (await finals(redis, ig_settings, ["8501"]))["8501"]
    assert (r.status, r.quota_usage, r.quota_total) == ("QUOTA_EXHAUSTED", 50, 50)
    assert sim.state.calls_for("8501").publish_calls == 0


async def test_business_use_case_throttling_pauses_the_instagram_account_only(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator
) -> None:
    settings = ig_settings.model_copy(update={"poll_max_seconds": 5.0})
    # 80002: throttling on Instagram (its business-use-case family); on Threads it is no code
    # of the throttling table, so the same answer is an unknown error, checked again later.
    sim.state.set_script("8601", ["throttle:80002", "FINISHED"])
    sim.state.set_script("8602", ["throttle:80002", "FINISHED"])
    await enqueue(redis, "8601", account=IG_USER, platform=IG, settings=settings)
    await enqueue(redis, "8602", account=IG_USER, settings=settings)  # the same id, on Threads
    async with running_worker(settings):
        got = await finals(redis, settings, ["8601", "8602"])
    assert got["8601"].status == "FINISHED" and got["8601"].throttled >= 1
    assert got["8602"].status == "FINISHED" and got["8602"].throttled == 0
    assert sim.state.calls_for("8602").count == 2
    views = {
        v.account: v for v in (await AdminStore.from_settings(redis, settings).accounts()).items
    }
    assert views[IG_ACCOUNT].throttled_total >= 1
    assert views[IG_ACCOUNT].last_throttle_code == "80002"
    assert IG_USER not in views or views[IG_USER].throttled_total == 0


async def test_instagram_carousels_hold_ten_children(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator
) -> None:
    kids = [f"87{i:02d}" for i in range(10)]
    for cid in [*kids, "8799"]:
        sim.state.set_script(cid, ["FINISHED"])
    sim.state.set_carousel("8799", kids)
    with pytest.raises(InvalidIdError, match="2 to 10 children"):
        await enqueue_carousel(
            redis, "8798", [*kids, "8797"], account=IG_USER, platform=IG, settings=ig_settings
        )
    # Threads takes 11 (up to 20): the limit is the platform's.
    await enqueue_carousel(redis, "8898", [f"88{i:02d}" for i in range(11)], settings=ig_settings)
    out = await enqueue_carousel(
        redis, "8799", kids, account=IG_USER, platform=IG, publish=True, settings=ig_settings
    )
    assert out.outcome == "enqueued"
    async with running_worker(ig_settings):
        r = (await finals(redis, ig_settings, ["8799"]))["8799"]
    assert (r.status, r.platform, len(r.children)) == ("PUBLISHED", IG, 10)
    assert sim.state.calls_for("8799").publishes == 1


async def test_a_live_poll_is_not_taken_over_by_the_other_platform(
    redis: Redis, ig_settings: Settings
) -> None:
    first = await enqueue(redis, "8901", platform=IG, settings=ig_settings)
    again = await enqueue(redis, "8901", settings=ig_settings)
    assert (first.outcome, again.outcome) == ("enqueued", "refused")
    assert "polled on instagram, not threads" in again.reason
    with pytest.raises(InvalidIdError, match="unknown platform"):
        await enqueue(redis, "8902", platform="myspace", settings=ig_settings)


async def test_an_expired_instagram_token_fails_its_account_with_a_clear_reason(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    write_atomically(path, json.dumps({IG_ACCOUNT: "EAAigEXPIREDtoken"}).encode())
    path.chmod(0o600)
    settings = ig_settings.model_copy(update={"threads_tokens_file": path})
    sim.state.set_tokens(valid={TEST_TOKEN: "default"}, expired={"EAAigEXPIREDtoken": IG_USER})
    ids = ["8951", "8952", "8953"]
    for cid in ids:
        sim.state.set_script(cid, ["IN_PROGRESS", "FINISHED"])
    await enqueue_many(redis, ids, account=IG_USER, platform=IG, settings=settings)
    async with running_worker(settings):
        got = await finals(redis, settings, ids)
    for r in got.values():
        assert r.status == "FAILED" and r.last_error_kind == "token"
        assert r.last_error and IG_ACCOUNT in r.last_error
        assert "EAAigEXPIREDtoken" not in json.dumps(r.to_dict())
    # One rejection marks the account; the other polls fail without spending a call each.
    assert sum(sim.state.calls_for(cid).count for cid in ids) < len(ids) + 1
    views = {
        v.account: v for v in (await AdminStore.from_settings(redis, settings).accounts()).items
    }
    assert views[IG_ACCOUNT].token_rejected


async def test_three_keepers_refresh_an_instagram_token_once_with_its_grant(
    redis: Redis, ig_settings: Settings, sim: RunningSimulator, tmp_path: Path
) -> None:
    settings = ig_settings.model_copy(
        update={"token_refresh": True, "token_refresh_margin_days": 10.0}
    )
    s, _ = await redis.time()
    now = float(s)
    path = tmp_path / "tokens.json"
    old = "IGQoldTOKENnearEXPIRY0123"
    write_atomically(
        path,
        json.dumps(
            {IG_ACCOUNT: {"token": old, "expires_at": now + 5 * DAY, "issued_at": now - 55 * DAY}}
        ).encode(),
    )
    sim.state.set_tokens(valid={old: IG_USER})
    keys = Keys(settings.key_prefix)
    await redis.zadd(keys.accounts, {IG_ACCOUNT: now})
    async with aiohttp.ClientSession() as session:
        keepers = [
            TokenKeeper(
                AccountStore(redis, keys),
                AccountTokenSource(None, path, environ={}, recheck_seconds=1.0),
                session,
                settings,
                owner=f"w{i}",
            )
            for i in range(3)
        ]
        for _ in range(3):
            await asyncio.gather(*(k.refresh_due() for k in keepers))
    assert sim.state.refresh_calls == 1
    refreshes = [q for q in sim.state.requests if q.kind == "refresh"]
    assert [(q.platform, q.answer) for q in refreshes] == [(IG, "ok")]
    data = json.loads(path.read_text())
    assert data[IG_ACCOUNT]["token"] != old
    assert abs(data[IG_ACCOUNT]["expires_at"] - (now + 60 * DAY)) < 10
    views = {
        v.account: v for v in (await AdminStore.from_settings(redis, settings).accounts()).items
    }
    assert views[IG_ACCOUNT].token_refreshes == 1


async def test_the_cli_takes_a_platform_for_enqueue_intake_and_quota(
    redis: Redis,
    ig_settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
) -> None:
    env = worker_env(
        project_env,
        ig_settings,
        INSTAGRAM_API_BASE_URL=sim.instagram_url,
        INSTAGRAM_ACCESS_TOKEN=IG_TOKEN,
    )
    code, out, err = await run_cli(
        "enqueue", "8961", "--platform", "instagram", "--account", IG_USER, env=env
    )
    assert code == 0 and "8961  enqueued" in out, err
    code, out, err = await run_cli(
        "enqueue", "8962", "--intake", "--platform", "instagram", "--account", IG_USER, env=env
    )
    assert code == 0 and "submitted to the intake" in out, err
    # The intake entry carries the user id and the platform, as a producer would write them.
    ((_, entry),) = await redis.xrange(Keys(ig_settings.key_prefix).intake)
    assert (entry[b"account"], entry[b"platform"]) == (IG_USER.encode(), b"instagram")
    sim.state.set_script("8961", ["FINISHED"])
    sim.state.set_script("8962", ["FINISHED"])
    async with running_worker(ig_settings):
        got = await finals(redis, ig_settings, ["8961", "8962"])
    assert {(r.status, r.platform, r.account) for r in got.values()} == {
        ("FINISHED", IG, IG_ACCOUNT)
    }
    sim.state.set_ig_quota(IG_USER, quota_usage=3, quota_total=50)
    code, out, err = await run_cli("quota", IG_USER, "--platform", "instagram", "--json", env=env)
    assert code == 0, err
    quota = json.loads(out)
    assert (quota["quota_usage"], quota["config"]["quota_total"]) == (3, 50)
    code, _, err = await run_cli("enqueue", "8963", "--platform", "myspace", env=env)
    assert code == 2 and "invalid choice" in err
