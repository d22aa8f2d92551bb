"""Publishing quota against the simulator and a real Redis: the Python API, the CLI and the
worker's cached copy. The parser of the reply: tests/unit/test_quota.py.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from worker import enqueue
from worker.jobs.quota import get_quota
from worker.store.accounts import AccountStore
from worker.store.keys import Keys


async def test_get_quota_reads_the_api_and_caches(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_quota("4242", quota_usage=12, reply_quota_usage=40)
    limit = await get_quota("4242", settings=settings, redis=redis)
    assert limit.quota_usage == 12 and limit.remaining("quota") == 238
    assert limit.reply_quota_usage == 40 and limit.remaining("reply") == 960
    assert limit.location_search_config is not None
    cached = await AccountStore(redis, keys).load_quota("4242")
    assert cached is not None and cached.posts_remaining == 238
    assert sim.state.quota_calls == 1


async def test_quota_cli(
    redis: Redis, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    sim.state.set_quota("4343", quota_usage=250, delete_quota_usage=1)
    env = dict(project_env, THREADS_API_BASE_URL=sim.base_url, THREADS_ACCESS_TOKEN=TEST_TOKEN)
    code, out, err = await run_cli("quota", "4343", "--json", env=env)
    assert code == 0, err
    data = json.loads(out)
    assert data["quota_usage"] == 250 and data["config"]["quota_total"] == 250
    assert data["delete_quota_usage"] == 1
    code, out, _ = await run_cli("quota", "4343", env=env)
    assert code == 0 and "posts" in out and "250 used, 0 left of 250 per 24 h" in out
    assert "deletes" in out and "1 used, 99 left of 100 per 24 h" in out
    code, out, _ = await run_cli("quota", "4343", "--cached", "--json", env=env)
    assert code == 0 and json.loads(out)["fetched_at"] > 0
    code, _, err = await run_cli("quota", "43x", env=env)
    assert code == 2 and "user id" in err
    sim.state.set_tokens(expired={TEST_TOKEN: "4343"})
    code, _, err = await run_cli("quota", "4343", env=env)
    assert code == 1 and "190" in err and TEST_TOKEN not in err


async def test_worker_keeps_a_cached_quota_per_account(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = settings.model_copy(update={"quota_refresh_seconds": 0.5})
    sim.state.set_quota("5151", quota_usage=9)
    sim.state.set_script("8101", ["FINISHED"])
    await enqueue(redis, "8101", account="5151", settings=settings)
    store = AccountStore(redis, keys)
    async with running_worker(settings):
        await wait_until(lambda: store.load_quota("5151"), timeout=10)
    cached = await store.load_quota("5151")
    assert cached is not None and cached.limit.quota_usage == 9 and cached.posts_remaining == 241
    assert await redis.ttl(keys.quota("5151")) > 0
