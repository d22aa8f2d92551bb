"""Redis Sentinel: the worker and the CLI find the primary through the sentinels, and follow a
failover (REDIS_SENTINELS, worker/store/connections.py). Real redis-server processes: a primary, a
replica, and one sentinel (quorum 1) that promotes the replica when the primary dies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bench.harness import (
    Child,
    RedisServer,
    free_port,
    redis_binary,
    spawn,
    start_redis,
    stop_redis,
)
from simulator import RunningSimulator
from tests.helpers.settings import make_settings
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, get_result
from worker.store.connections import open_redis

MASTER = "threads-primary"


@dataclass
class Cluster:
    primary: RedisServer
    replica: RedisServer
    sentinel_port: int
    sentinel: Child

    def sentinel_client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host="127.0.0.1", port=self.sentinel_port)

    def primary_is_up(self) -> bool:
        """The sentinel sees a primary and does not think it down (redis-py would refuse it)."""
        try:
            state = self.sentinel_client().execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "MASTER", MASTER
            )
        except RedisError:
            return False
        flags = state.get("flags", "") if isinstance(state, dict) else repr(state)
        return "master" in flags and "s_down" not in flags and "o_down" not in flags

    def primary_port(self) -> int | None:
        addr = self.sentinel_client().execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
        )
        return int(addr[1]) if addr else None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    primary = start_redis(tmp_path / "primary")
    replica = start_redis(
        tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # sentinel rewrites its config: a file of its own
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
        # Not lower: under load a healthy primary can miss a tighter deadline and be failed over.
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    cmd = [redis_binary(), str(conf), "--sentinel", "--logfile", str(tmp_path / "sentinel.log")]
    sentinel = spawn("sentinel", cmd, tmp_path / "sentinel.out", new_session=False)
    c = Cluster(primary, replica, port, sentinel)
    try:
        yield c
    finally:
        sentinel.stop(timeout=5)
        for server in (replica, primary):
            stop_redis(server)  # a no-op for the primary the test killed


def sentinel_knows_the_replica(c: Cluster) -> bool:
    try:
        replicas = c.sentinel_client().execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "REPLICAS", MASTER
        )
    except RedisError:
        return False
    return any(str(c.replica.port).encode() in entry for entry in map(bytes_of, replicas))


def bytes_of(entry: object) -> bytes:
    # redis-py answers SENTINEL REPLICAS with a list of flat lists or of dicts, by version.
    return repr(entry).encode()


async def test_worker_and_cli_follow_a_failover(cluster: Cluster, sim: RunningSimulator) -> None:
    await wait_until(lambda: _sync(sentinel_knows_the_replica, cluster), timeout=20)
    settings = make_settings(
        # The host here is never used: the sentinels say where the primary is.
        "redis://127.0.0.1:1/0",
        sim.base_url,
        redis_sentinels=f"127.0.0.1:{cluster.sentinel_port}",
        redis_sentinel_master=MASTER,
        # Longer than a failover takes to settle (sentinel's down-after, the promotion, the
        # clients' retries): a container enqueued right after it is still checked in its window.
        poll_max_seconds=10.0,
    )
    sim.state.set_script("9301", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("9302", ["IN_PROGRESS", "FINISHED"])
    redis = open_redis(settings)
    try:
        async with running_worker(settings) as worker:
            await enqueue(redis, "9301", settings=settings)

            async def final(cid: str) -> bool:
                try:
                    r = await get_result(redis, cid, settings=settings)
                except RedisConnectionError:
                    return False
                return r is not None and r.final

            await wait_until(lambda: final("9301"), timeout=15)
            # The replica has it before the primary dies. (15 s: a replica's first sync has
            # taken over 5 s on a 2-core machine running a CPU-bound job beside the tests.)
            assert await redis.execute_command("WAIT", 1, 15000) == 1  # type: ignore[no-untyped-call]

            cluster.primary.proc.kill()
            cluster.primary.proc.wait()
            await wait_until(
                lambda: _sync(lambda c: c.primary_port() == c.replica.port, cluster), timeout=30
            )

            async def enqueued() -> bool:
                try:
                    await enqueue(redis, "9302", settings=settings)
                except RedisConnectionError:
                    return False  # this client's old connection; the next one asks again
                return True

            await wait_until(enqueued, timeout=15, interval=0.2)
            await wait_until(lambda: final("9302"), timeout=30, interval=0.2)
            assert worker.alive
            # The worker's shutdown writes to Redis too: let the sentinel settle first.
            await wait_until(lambda: _sync(lambda c: c.primary_is_up(), cluster), timeout=15)
        first = await get_result(redis, "9301", settings=settings)
        second = await get_result(redis, "9302", settings=settings)
        assert first is not None and first.status == "FINISHED"
        assert second is not None and second.status == "FINISHED" and second.checks == 2
    finally:
        await redis.aclose()


async def _sync(check: object, c: Cluster) -> bool:
    assert callable(check)
    return bool(await asyncio.to_thread(check, c))
