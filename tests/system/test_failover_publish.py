"""A failover to a replica that missed the publish claim does not publish twice (issue 20 #1).

A real worker process publishes through a proxy to a primary with one replica. The replica is
frozen (SIGSTOP) once the container is FINISHED and its publish is due: the claim reaches the
primary only, so ``WAIT`` is not acknowledged and the worker does not call the API; then the
primary dies and the frozen replica, which never saw the claim, is promoted. The worker publishes
there, once. Without the wait the call would go out on the old primary and again after the
failover (``bench/model/mutants/1-no-replica-wait.patch`` reverts it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

from redis.asyncio import Redis

from bench.model.topology import Topology
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from worker import PollerClient


async def test_failover_after_an_unreplicated_claim_publishes_once(
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    topology = await asyncio.to_thread(Topology, tmp_path / "redis")
    redis = Redis.from_url(topology.url)
    try:
        settings = settings.model_copy(update={"redis_url": topology.url, "poll_max_seconds": 60.0})
        sim.state.set_script("9801", ["IN_PROGRESS", "FINISHED"])
        env = worker_env(
            project_env,
            settings,
            REDIS_URL=topology.url,
            POLL_INTERVAL_SECONDS="0.5",
            POLL_MAX_SECONDS="60",
            PUBLISH_GRACE_SECONDS="1.5",
            PUBLISH_MIN_AGE_SECONDS="0",
            PUBLISH_MAX_ATTEMPTS="5",
            PUBLISH_WAIT_TIMEOUT_SECONDS="0.3",
        )
        client = PollerClient.from_settings(settings, redis)
        await client.enqueue("9801", publish=True)
        worker = await start_worker(env, tmp_path / "worker.log")
        try:

            async def field(name: str) -> str | None:
                raw = redis.hget(f"{settings.key_prefix}:result:9801", name)
                value: bytes | None = await raw
                return value.decode() if value is not None else None

            # FINISHED seen, the publish due in 1.5 s (the grace): the replica has it.
            await wait_until(lambda: _equals(field("publish_status"), "pending"), timeout=20)
            await asyncio.to_thread(topology.partition)
            # The claim is not acknowledged: given back, nothing published.
            await wait_until(lambda: _equals(field("publish_verify"), "1"), timeout=20)
            assert sim.state.calls_for("9801").publish_calls == 0
            await asyncio.to_thread(topology.failover)
            r = await client.wait("9801", timeout=30)
            assert r is not None and r.status == "PUBLISHED"
            assert sim.state.calls_for("9801").publish_calls == 1
        finally:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), 20)
    finally:
        await redis.aclose()
        await asyncio.to_thread(topology.close)


async def _equals(value: Awaitable[str | None], want: str) -> bool:
    return (await value) == want
