"""Our piece of cluster mode (worker/store/cluster.py), against a real Redis Cluster of three
primaries with a replica each (bench.harness.RedisClusterNodes): pipelines are MULTI/EXEC on
the primary of the deployment's slot, with their scripts loaded and WAIT on the writer's own
connection; TIME, PING and INFO come from that primary whatever redis-py's default node is; a
failover moves them all to the new primary (the first pipeline after it meets MOVED and runs
again there, unseen by the caller); the worker's start-up wait outlasts a cluster that is still
being created and gives up at once on a refused password."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import AuthenticationError

from bench.harness import RedisClusterNodes, RedisServer
from config import Settings, load_settings
from worker import PollerClient
from worker.store.cluster import DeploymentCluster
from worker.store.connections import connect_worker_redis, open_redis
from worker.store.keys import Keys
from worker.store.queue import JobQueue

PREFIX = "{tp}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield nodes
    finally:
        nodes.stop()


def cluster_settings(nodes: str, **more: object) -> Settings:
    values: dict[str, object] = {
        "_env_file": None,
        "redis_cluster_nodes": nodes,
        "key_prefix": PREFIX,
        "threads_access_token": "test-token",
    }
    values.update(more)
    return load_settings(**values)


def calls(server: RedisServer, command: str) -> int:
    """How many times ``server`` ran ``command`` (INFO commandstats)."""
    stats: dict[str, Any] = server.client().info("commandstats")  # type: ignore[assignment]
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


def primaries(cluster: RedisClusterNodes) -> list[RedisServer]:
    return [s for s in cluster.alive() if cluster.role(s) == "master"]


async def test_open_redis_gives_the_cluster_client(cluster: RedisClusterNodes) -> None:
    redis = open_redis(cluster_settings(cluster.nodes))
    try:
        assert isinstance(redis, DeploymentCluster)
        assert redis.slot == cluster.keyslot(PREFIX) == cluster.keyslot(Keys(PREFIX).queue)
        assert await redis.ping() is True
    finally:
        await redis.aclose()


async def test_transactions_and_scripts_run_on_the_slot_primary(cluster: RedisClusterNodes) -> None:
    settings = cluster_settings(cluster.nodes)
    primary = cluster.primary_of(PREFIX)
    for server in primaries(cluster):
        server.client().script_flush()  # the pipeline must load what it runs
    redis = open_redis(settings)
    try:
        before = {s.port: calls(s, "exec") for s in primaries(cluster)}
        # A carousel: its parent and children in one MULTI of EVALSHAs (ResultStore.enqueue).
        client = PollerClient.from_settings(settings, redis)
        outcome = await client.enqueue_carousel("6100", ["6101", "6102"])
        assert outcome.outcome == "enqueued", outcome
        got = await client.get_many(["6100", "6101", "6102"])
        assert all(r is not None and r.status == "QUEUED" for r in got), got
        key = f"{PREFIX}:test:counter"
        async with redis.pipeline(transaction=True) as tx:
            tx.incr(key)
            tx.incr(key)
            tx.time()
            first, second, (seconds, _) = await tx.execute()
        assert (first, second) == (1, 2) and abs(seconds - time.time()) < 5
        after = {s.port: calls(s, "exec") for s in primaries(cluster)}
        moved = {port: after[port] - before[port] for port in after}
        assert moved == {p: (2 if p == primary.port else 0) for p in after}, moved
    finally:
        await redis.aclose()


async def test_wait_follows_the_writes_of_its_own_connection(cluster: RedisClusterNodes) -> None:
    redis = open_redis(cluster_settings(cluster.nodes))
    script = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    key = f"{PREFIX}:test:claimed"
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.client_id()
            await script(keys=[key], args=["yes"], client=pipe)
            pipe.execute_command("WAIT", 1, 5000)
            pipe.client_id()
            pipe.execute_command("ROLE")
            before, written, acked, after, role = await pipe.execute()
        assert before == after  # one connection: WAIT counts the script's write
        assert written == b"OK" and acked == 1
        assert (
            role[0] == b"master" and role[2][0][1] == str(cluster.replica_of(PREFIX).port).encode()
        )
        # Acknowledged by the replica: it holds the write already.
        replica = cluster.replica_of(PREFIX).client()
        replica.execute_command("READONLY")  # type: ignore[no-untyped-call]
        assert replica.get(key) == b"yes"
    finally:
        await redis.aclose()


async def test_keyless_commands_come_from_the_slot_primary(cluster: RedisClusterNodes) -> None:
    redis = open_redis(cluster_settings(cluster.nodes))
    assert isinstance(redis, DeploymentCluster)
    try:
        await redis.ping()
        primary = cluster.primary_of(PREFIX)
        # redis-py's default node is any primary, and it changes after failures: make it another.
        other = next(n for n in redis.get_primaries() if n.port != primary.port)
        redis.set_default_node(other)
        before = {
            s.port: (calls(s, "time"), calls(s, "ping"), calls(s, "script|load"))
            for s in primaries(cluster)
        }
        seconds, _micros = await redis.time()
        assert abs(seconds - time.time()) < 5
        assert await redis.ping() is True
        info = await redis.info("replication")
        assert info["role"] == "master" and info["connected_slaves"] == 1
        # A script the node lost (SCRIPT FLUSH, a new primary): redis-py loads it after NOSCRIPT
        # there, not on every primary.
        for server in primaries(cluster):
            server.client().script_flush()
        script = redis.register_script("return redis.call('INCR', KEYS[1])")
        assert await script(keys=[f"{PREFIX}:test:loaded"]) == 1
        after = {
            s.port: (calls(s, "time"), calls(s, "ping"), calls(s, "script|load"))
            for s in primaries(cluster)
        }
        for port in after:
            want = (1, 1, 1) if port == primary.port else (0, 0, 0)
            assert tuple(a - b for a, b in zip(after[port], before[port], strict=True)) == want
    finally:
        await redis.aclose()


async def test_a_foreign_job_outside_the_slot_is_parked_not_fatal(
    cluster: RedisClusterNodes,
) -> None:
    """A job in the queue whose id has no hash tag (arq's own ``enqueue_job`` id, added by
    hand): its keys are in another slot, so no claim script may touch them. The claim parks it
    an hour ahead and claims the check behind it; it never fails the claim."""
    settings = cluster_settings(cluster.nodes)
    redis = open_redis(settings)
    keys = Keys(PREFIX)
    try:
        assert isinstance(redis, DeploymentCluster)
        foreign = "3f2a9c"  # arq's uuid-like id: arq:in-progress:3f2a9c is in another slot
        assert redis.keyslot(f"arq:in-progress:{foreign}") != redis.slot
        check = keys.job_id("9701", "g")
        await redis.delete(keys.queue)  # earlier tests' polls
        await redis.zadd(keys.queue, {foreign: 1, check: 2})
        queue = JobQueue(redis, keys, job_ttl_seconds=3600)
        claimed: list[str] = []
        for _ in range(3):
            claim = await queue.claim("w", limit=10, lease_ms=10_000)
            claimed += [job.job_id for job in claim.jobs]
        assert claimed == [check]
        parked = await redis.zscore(keys.queue, foreign)
        assert parked is not None and parked >= claim.now_ms + 3_500_000
    finally:
        await redis.delete(keys.queue)
        await redis.aclose()


async def test_a_failover_moves_everything_to_the_new_primary(cluster: RedisClusterNodes) -> None:
    redis = open_redis(cluster_settings(cluster.nodes), worker=True)
    key = f"{PREFIX}:test:failover"
    try:
        async with redis.pipeline(transaction=True) as tx:
            tx.set(key, 1)
            await tx.execute()
        old = cluster.primary_of(PREFIX)
        new = await asyncio.to_thread(cluster.failover, PREFIX)
        assert new is not old
        # The first pipeline meets MOVED on the old primary, has the topology read again and
        # runs on the new one: the caller sees no error.
        async with redis.pipeline(transaction=True) as tx:
            tx.incr(key)
            tx.execute_command("ROLE")
            count, role = await tx.execute()
        assert count == 2 and role[0] == b"master"
        assert calls(new, "exec") >= 1
        before = calls(new, "time")
        await redis.time()
        assert calls(new, "time") == before + 1
        assert cluster.role(old) == "slave"
    finally:
        await redis.aclose()


async def test_start_up_waits_for_a_cluster_being_created(tmp_path: Path) -> None:
    nodes = RedisClusterNodes(tmp_path / "late", replicas=0).start_nodes()
    try:
        settings = cluster_settings(nodes.nodes, redis_startup_timeout_seconds=60)
        connecting = asyncio.create_task(connect_worker_redis(settings))
        await asyncio.sleep(2.5)
        assert not connecting.done()  # nodes up, no slot served yet: it keeps waiting
        await asyncio.to_thread(nodes.create)
        redis = await asyncio.wait_for(connecting, 10)
        try:
            assert await redis.time()
        finally:
            await redis.aclose()
    finally:
        nodes.stop()


async def test_start_up_gives_up_at_once_on_a_refused_password(
    cluster: RedisClusterNodes,
) -> None:
    for server in cluster.alive():
        server.client().acl_setuser("tp-someone", enabled=True, passwords=["+right-password-1"])
    settings = cluster_settings(
        cluster.nodes, redis_url="redis://tp-someone:wrong-password-1@127.0.0.1:1/0"
    )
    t0 = time.monotonic()
    with pytest.raises(AuthenticationError):
        await connect_worker_redis(settings)
    assert time.monotonic() - t0 < 10  # not REDIS_STARTUP_TIMEOUT_SECONDS of retries
