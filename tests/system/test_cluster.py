"""Redis Cluster (REDIS_CLUSTER_NODES, KEY_PREFIX={tp}): a real cluster of three primaries with
a replica each, created from scratch (``redis-cli --cluster create``, bench.harness).

The demo's scenarios run on it through a real worker process, each reaching its final state,
and every key they leave lies in one slot. Then the primary serving ``{tp}``'s slot is failed
over twice while polls are in flight, the worker (a process, under its own ACL user on every
node) and ``serve`` running: first by ``CLUSTER FAILOVER`` on its replica, then by SIGKILL
(``cluster-node-timeout`` 2 s). Polls started before end in their right final states, enqueues
through the CLI, the intake and HTTP work after each, the publishes go out once, each
container's final event is there once, and no ACL check failed. The figures (how long each
failover took until checks resumed) are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.harness import (
    Child,
    RedisClusterNodes,
    environment_without_settings,
    free_port,
    spawn,
    threads_poller_command,
)
from config import load_settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import wait_until
from tests.integration.test_serve import ahttp, serve_env, started
from worker import PollerClient, get_result
from worker.demo import DEMO_CLUSTER_PREFIX, SCENARIOS
from worker.store.connections import open_redis
from worker.store.keys import Keys

PREFIX = "{tp}"
WORKER_PASSWORD = "worker-password-of-the-test-1"
ACCOUNT = "777"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster"), node_timeout_ms=2000)
    t0 = time.monotonic()
    nodes.start()
    print(f"\ncluster of 6 nodes created and settled in {time.monotonic() - t0:.1f}s")
    try:
        yield nodes
    finally:
        nodes.stop()


async def test_the_demo_runs_on_a_cluster(cluster: RedisClusterNodes, tmp_path: Path) -> None:
    env = dict(environment_without_settings(), REDIS_CLUSTER_NODES=cluster.nodes)
    t0 = time.monotonic()
    # In a directory of its own: no .env of the checkout is read.
    demo = ("demo", "--interval", "1", "--window", "5", "--timeout", "60")
    code, out, err = await run_cli(*demo, env=env, timeout=90, cwd=tmp_path)
    print(f"demo on the cluster: {time.monotonic() - t0:.1f}s")
    assert code == 0, out + err
    assert "Every scenario reached its expected final state." in out
    assert "Webhooks received with a valid signature: 4 of 4" in out

    settings = load_settings(
        _env_file=None, redis_cluster_nodes=cluster.nodes, key_prefix=DEMO_CLUSTER_PREFIX
    )
    redis = open_redis(settings)
    try:
        for sc in SCENARIOS:
            r = await get_result(redis, sc.container_id, settings=settings)
            assert r is not None and r.final and r.status == sc.expect, (sc, r)
    finally:
        await redis.aclose()
    # Every key the demo left (results, events, arq's jobs...) is in the one slot of its tag.
    slot = cluster.keyslot(DEMO_CLUSTER_PREFIX)
    primary = cluster.primary_of(DEMO_CLUSTER_PREFIX).client()
    in_slot = primary.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)  # type: ignore[no-untyped-call]
    everywhere = 0
    for server in cluster.alive():
        if cluster.role(server) == "master":
            everywhere += server.client().dbsize()  # type: ignore[operator]
    assert in_slot == everywhere and in_slot > len(SCENARIOS), (in_slot, everywhere)


# Polls in flight across both failovers: IN_PROGRESS until re-scripted to their final answer.
BEFORE = [f"81{i:02d}" for i in range(12)]
FINAL_OF_BEFORE = {
    cid: ("FINISHED", "ERROR:FAILED_DOWNLOADING_VIDEO", "EXPIRED")[i % 3]
    for i, cid in enumerate(BEFORE)
}
EXPECT = {"FINISHED": "FINISHED", "ERROR:FAILED_DOWNLOADING_VIDEO": "ERROR", "EXPIRED": "EXPIRED"}
INTAKE = ["8190", "8191"]
PUBLISH = ["8180", "8181"]
AFTER_SWITCH = ["8201", "8202"]  # enqueued (CLI) after the CLUSTER FAILOVER
AFTER_KILL = ["8301", "8302"]  # enqueued (CLI) after the SIGKILL
OVER_HTTP = ["8401", "8402"]  # enqueued through serve after the SIGKILL


def set_users(cluster: RedisClusterNodes, line: str) -> None:
    """The ``threads-poller acl`` line, with a password, on every node: replicas too, since one
    of them is the primary after a failover (ACLs are not replicated); saved to each node's ACL
    file, so that a node restarted after a SIGKILL has them."""
    args = [*shlex.split(line), f">{WORKER_PASSWORD}"]
    for server in cluster.alive():
        client = server.client()
        client.execute_command(*args)  # type: ignore[no-untyped-call]
        client.execute_command("ACL", "SAVE")  # type: ignore[no-untyped-call]
        client.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]


def acl_log(cluster: RedisClusterNodes) -> list[object]:
    return [
        entry
        for server in cluster.alive()
        for entry in server.client().execute_command("ACL", "LOG")  # type: ignore[no-untyped-call]
    ]


def barrier(cluster: RedisClusterNodes) -> int:
    """A write on the slot's primary and WAIT for its replica: every write before it (the
    enqueues) is on the replica too. Replication is asynchronous: a SIGKILL can lose the last
    moment's writes, as on one primary (README, "Cluster mode")."""
    primary = cluster.primary_of(PREFIX).client()
    primary.set(f"{PREFIX}:test:barrier", "1")
    acked: int = primary.execute_command("WAIT", 1, 5000)  # type: ignore[no-untyped-call]
    return acked


def checked_since(sim: RunningSimulator, cids: list[str], since: float) -> set[str]:
    return {r.id for r in sim.state.requests if r.t > since and r.id in cids}


async def resumed(sim: RunningSimulator, cids: list[str], since: float) -> tuple[float, float]:
    """Seconds after ``since`` until the first, and until every, poll of ``cids`` was checked."""
    await wait_until(lambda: checked_since(sim, cids, since) == set(cids), timeout=30)
    times = sorted(
        min(r.t for r in sim.state.requests if r.id == cid and r.t > since) for cid in cids
    )
    return times[0] - since, times[-1] - since


async def enqueued_by_cli(env: dict[str, str], *args: str, cwd: Path) -> float:
    """Enqueue through the CLI, again until it works; seconds it took."""
    t0 = time.monotonic()
    while True:
        code, out, err = await run_cli("enqueue", *args, env=env, cwd=cwd)
        if code == 0:
            assert "enqueued" in out, out
            return time.monotonic() - t0
        assert code == 4, (code, out, err)  # Redis unreachable for now, nothing else
        assert time.monotonic() - t0 < 30, err
        await asyncio.sleep(0.2)


async def test_worker_serve_and_cli_follow_two_failovers(
    cluster: RedisClusterNodes, sim: RunningSimulator, tmp_path: Path
) -> None:
    base_env = dict(
        environment_without_settings(),
        REDIS_CLUSTER_NODES=cluster.nodes,
        KEY_PREFIX=PREFIX,
        THREADS_API_BASE_URL=sim.base_url,
        THREADS_ACCESS_TOKEN=TEST_TOKEN,
        POLL_INTERVAL_SECONDS="0.5",
        POLL_MAX_SECONDS="60",
        HTTP_TIMEOUT_SECONDS="1",
        JOB_TIMEOUT_SECONDS="5",
        ACCOUNT_MAX_REQUESTS_PER_SECOND="0",
        PUBLISH_MIN_AGE_SECONDS="0",
        PUBLISH_GRACE_SECONDS="0.1",
        INTAKE_CLAIM_IDLE_SECONDS="1",
        LOG_FORMAT="json",
        METRICS_PORT="0",
    )
    code, line, err = await run_cli("acl", "worker", env=base_env, cwd=tmp_path)
    assert code == 0 and "+cluster|slots" in line and "~{tp}:*" in line, err
    set_users(cluster, line.strip())
    user = line.split()[2]
    worker_env = dict(base_env, REDIS_URL=f"redis://{user}:{WORKER_PASSWORD}@127.0.0.1:1/0")
    for cid in [*BEFORE, *INTAKE, *PUBLISH, *AFTER_SWITCH, *AFTER_KILL, *OVER_HTTP]:
        sim.state.set_script(cid, ["IN_PROGRESS"])
    sim.state.set_quota(ACCOUNT, quota_usage=10)

    await enqueued_by_cli(base_env, *BEFORE, cwd=tmp_path)
    await enqueued_by_cli(base_env, "--account", ACCOUNT, "--publish", *PUBLISH, cwd=tmp_path)
    for cid in INTAKE:
        code, _, err = await run_cli("enqueue", "--intake", cid, env=base_env, cwd=tmp_path)
        assert code == 0, err

    port = free_port()
    api = spawn(
        "serve",
        [*threads_poller_command(), "serve"],
        tmp_path / "serve.log",
        env=serve_env(base_env, port, SERVE_METRICS_PORT="0"),
        cwd=tmp_path,
    )
    worker = spawn(
        "worker",
        [*threads_poller_command(), "worker"],
        tmp_path / "worker.log",
        env=worker_env,
        cwd=tmp_path,
    )
    children: list[Child] = [api, worker]
    base = f"http://127.0.0.1:{port}"
    in_flight = [*BEFORE, *INTAKE, *PUBLISH]
    try:
        await started(api, base)
        # Every poll checked twice: in flight, each on its own schedule.
        await wait_until(
            lambda: all(sim.state.calls_for(c).count >= 2 for c in in_flight), timeout=30
        )

        # 1. CLUSTER FAILOVER on the replica: it catches up, then takes over; nothing lost.
        t0 = time.time()
        await asyncio.to_thread(cluster.failover, PREFIX)
        switched = time.time()
        first, every = await resumed(sim, in_flight, switched)
        print(
            f"CLUSTER FAILOVER: {switched - t0:.1f}s until every node agreed; checks resumed "
            f"{first:.2f}s later, every poll in flight checked within {every:.2f}s"
        )
        took = await enqueued_by_cli(base_env, *AFTER_SWITCH, cwd=tmp_path)
        print(f"  enqueue through the CLI after it: {took:.2f}s")

        # 2. SIGKILL of the new primary: its replica (the old primary) takes over after
        # cluster-node-timeout. The writes so far are on the replica (WAIT), so none is lost.
        assert barrier(cluster) == 1
        t0 = time.time()
        killed, successor = await asyncio.to_thread(cluster.kill_primary, PREFIX)
        promoted = time.time()
        first, every = await resumed(sim, [*in_flight, *AFTER_SWITCH], promoted)
        print(
            f"SIGKILL of the primary: {promoted - t0:.1f}s until its replica took over (node "
            f"timeout 2s); checks resumed {first:.2f}s later, every poll in flight checked "
            f"within {every:.2f}s ({promoted - t0 + every:.1f}s after the kill)"
        )
        assert successor is not killed and worker.alive(), worker.tail()
        took = await enqueued_by_cli(base_env, *AFTER_KILL, cwd=tmp_path)
        print(f"  enqueue through the CLI after it: {took:.2f}s")

        async def posted() -> bool:
            status, _ = await ahttp(
                "POST", base + "/v1/containers", body={"container_ids": OVER_HTTP}
            )
            return status == 202

        await wait_until(posted, timeout=30, interval=0.2)
        # The killed node comes back as the replica of its successor: the publishes below wait
        # (WAIT) for the one replica the deployment is known to have (PUBLISH_WAIT_REPLICAS
        # unset: remembered), and give up without it (PUBLISH_FAILED), as on a single primary.
        t0 = time.time()
        await asyncio.to_thread(killed.start)
        await wait_until(lambda: asyncio.to_thread(cluster.settled), timeout=30)
        print(f"  the killed node back as a replica of its successor in {time.time() - t0:.1f}s")

        # Now every poll gets its final answer.
        for cid in [*AFTER_SWITCH, *AFTER_KILL, *OVER_HTTP, *INTAKE]:
            sim.state.set_script(cid, ["FINISHED"])
        for cid, step in FINAL_OF_BEFORE.items():
            sim.state.set_script(cid, [step])
        for cid in PUBLISH:
            sim.state.set_script(cid, ["FINISHED"])
        every_cid = [*BEFORE, *INTAKE, *PUBLISH, *AFTER_SWITCH, *AFTER_KILL, *OVER_HTTP]
        settings = load_settings(
            _env_file=None, redis_cluster_nodes=cluster.nodes, key_prefix=PREFIX
        )
        redis = open_redis(settings)
        keys = Keys(PREFIX)
        try:
            client = PollerClient.from_settings(settings, redis)

            async def all_final() -> bool:
                return all(r is not None and r.final for r in await client.get_many(every_cid))

            await wait_until(all_final, timeout=30, interval=0.2)
            got = {r.container_id: r for r in await client.get_many(every_cid) if r is not None}
            for cid in BEFORE:
                assert got[cid].status == EXPECT[FINAL_OF_BEFORE[cid]], got[cid]
            for cid in [*INTAKE, *AFTER_SWITCH, *AFTER_KILL, *OVER_HTTP]:
                assert got[cid].status == "FINISHED", got[cid]
            for cid in PUBLISH:
                assert (got[cid].status, got[cid].publish_status) == ("PUBLISHED", "published")
                calls = sim.state.calls_for(cid)
                assert (calls.publish_calls, calls.publishes) == (1, 1), (cid, calls)
            # One final event per poll, none lost, none twice; nothing left in flight.
            events = Counter(
                fields[b"container_id"].decode() for _, fields in await redis.xrange(keys.events)
            )
            assert {cid: events[cid] for cid in every_cid} == dict.fromkeys(every_cid, 1)
            await wait_until(lambda: _zcard(redis, keys.inflight), timeout=10)
        finally:
            await redis.aclose()

        code, out, err = await run_cli("status", "--json", *every_cid, env=base_env, cwd=tmp_path)
        assert code == 0, err
        assert all(json.loads(row)["final"] for row in out.splitlines())
        status, body = await ahttp("GET", base + "/healthz", key=None)
        assert status == 200, body
        assert not acl_log(cluster)  # the worker's user on the new primaries too
    finally:
        codes = [await child.astop(20) for child in children]
    assert codes == [0, 0], (api.tail(), worker.tail())


async def _zcard(redis: Redis, key: str) -> bool:
    return bool(await redis.zcard(key) == 0)
