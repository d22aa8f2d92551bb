"""Carousels published under worker kills: never two publishes of a parent, never a parent
polled before its children, every child with its own result (issue 14, "under worker kills too").

A worker is SIGKILLed four times while carousels move through their children, the parent's
checks and the publish (some publishes answer only after a timeout, which the simulator counts
as published); a last worker finishes the work.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from tests.integration.test_publish import ACCOUNT
from worker import PollerClient

CAROUSELS = {f"960{i}": [f"961{i}{k}" for k in range(3)] for i in range(6)}
KILLS = 4


async def test_carousels_publish_once_under_worker_kills(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    settings = settings.model_copy(
        update={"poll_max_seconds": 60.0, "publish_min_age_seconds": 0.0}
    )
    for n, (parent, kids) in enumerate(CAROUSELS.items()):
        sim.state.set_carousel(parent, kids)
        for k, kid in enumerate(kids):
            # Slow answers keep runs in flight when the kills come.
            sim.state.set_script(kid, ["slow:0.4:IN_PROGRESS"] * (k + n % 3) + ["FINISHED"])
        sim.state.set_script(parent, ["slow:0.4:IN_PROGRESS", "slow:0.4:FINISHED"])
        if n % 2:
            # The publish answers after a timeout, yet did publish: ambiguous, never repeated.
            sim.state.set_publish_fault(parent, "timeout_after_publish")
    client = PollerClient.from_settings(settings, redis)
    for parent, kids in CAROUSELS.items():
        await client.enqueue_carousel(parent, kids, account=ACCOUNT, publish=True)
    env = worker_env(
        project_env,
        settings,
        KEY_PREFIX=settings.key_prefix,
        POLL_INTERVAL_SECONDS="1",
        POLL_MAX_SECONDS="60",
        HTTP_TIMEOUT_SECONDS="2",
        JOB_TIMEOUT_SECONDS="4",
        PUBLISH_GRACE_SECONDS="0.1",
        PUBLISH_MIN_AGE_SECONDS="0",
    )

    async def all_final() -> bool:
        rs = await client.get_many(list(CAROUSELS))
        return all(r is not None and r.final for r in rs)

    published_before_last_kill = 0
    for i in range(KILLS):
        w = await start_worker(env, tmp_path / f"w{i}.log")
        await asyncio.sleep(3.0)
        w.send_signal(signal.SIGKILL)
        await w.wait()
        published_before_last_kill = sum(sim.state.calls_for(p).publish_calls for p in CAROUSELS)
    # The kills hit work in progress: some carousels were not final yet.
    assert not await all_final()
    last = await start_worker(env, tmp_path / "last.log")
    try:
        await wait_until(all_final, timeout=120)
    finally:
        last.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(last.wait(), 20) == 0

    print(f"publish calls before the last kill: {published_before_last_kill} of {len(CAROUSELS)}")
    for n, (parent, kids) in enumerate(CAROUSELS.items()):
        r = await client.get(parent)
        calls = sim.state.calls_for(parent)
        assert r is not None and r.status == "PUBLISHED", (parent, r)
        assert calls.publishes == 1 and calls.publish_calls == 1, (parent, calls)
        assert calls.early_parent_calls == 0, parent
        assert r.publish_status == ("unconfirmed" if n % 2 else "published"), (parent, r)
        for kid in kids:
            child = await client.get(kid)
            assert child is not None and child.status == "FINISHED", (kid, child)
            assert child.carousel_parent == parent
            # A child is never published on its own.
            assert sim.state.calls_for(kid).publish_calls == 0
