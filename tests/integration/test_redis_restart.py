"""Found by the fault run (bench/faults/run.py): a Redis that restarts or drops connections under
a working worker. Real redis-server processes (AOF on, stopped and started on the same port), the
simulator in process, the worker in process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.harness import RedisServer, simulator_in_process, start_redis, stop_redis
from config import Settings
from simulator import SimulatorState
from simulator.records import Reply
from tests.helpers.settings import make_settings
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, enqueue_many, get_result
from worker.store.connections import open_redis


@contextlib.contextmanager
def short_failure() -> Iterator[None]:
    """Fail with one line instead of redis-py's and arq's deep exception chains: rendering those
    can trip CPython 3.11.7's AST recursion bug (gh-106905), crashing pytest on a later test."""
    try:
        yield
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)


async def test_worker_redis_client_waits_for_a_restarting_redis(tmp_path: Path) -> None:
    servers = [start_redis(tmp_path / "redis", appendonly=True)]
    settings = make_settings(servers[0].url, "http://127.0.0.1:9/v1.0")
    pool = open_redis(settings, worker=True)
    try:
        assert await pool.ping()
        stop_redis(servers[0])
        await pool.connection_pool.disconnect()  # as after the connections saw Redis go away

        async def restart() -> None:
            await asyncio.sleep(0.5)
            again = await asyncio.to_thread(
                start_redis, tmp_path / "redis", appendonly=True, port=servers[0].port
            )
            servers.append(again)

        back = asyncio.create_task(restart())
        try:
            with short_failure():
                # The worker's client rides out a short restart (about 2.5 s of back-off).
                assert await pool.ping()
        finally:
            await back
    finally:
        await pool.aclose()
        for server in servers:
            stop_redis(server)


class CrashRedisOnCall(SimulatorState):
    """Answers status calls normally, but takes Redis down at the first one."""

    def __init__(self, on_first_call: Callable[[], None]) -> None:
        super().__init__(scripts={"8800*": ["FINISHED"]})
        self.on_first_call: Callable[[], None] | None = on_first_call

    def handle_status(self, container_id: str, token: str | None) -> Reply:
        reply = super().handle_status(container_id, token)
        if self.on_first_call is not None:
            hook, self.on_first_call = self.on_first_call, None
            hook()
        return reply


async def test_a_check_that_meets_a_redis_restart_still_records_its_answer(
    tmp_path: Path,
) -> None:
    servers = [start_redis(tmp_path / "redis", appendonly=True)]
    background: list[asyncio.Task[None]] = []

    async def restart_soon() -> None:
        await asyncio.sleep(0.5)
        again = await asyncio.to_thread(
            start_redis, tmp_path / "redis", appendonly=True, port=servers[0].port
        )
        servers.append(again)

    def crash() -> None:
        stop_redis(servers[0])  # Redis goes away while the check holds the API's answer
        background.append(asyncio.get_running_loop().create_task(restart_soon()))

    state = CrashRedisOnCall(crash)
    try:
        async with simulator_in_process(state) as sim:
            settings = make_settings(servers[0].url, sim.base_url, poll_max_seconds=30.0)
            redis = Redis.from_url(servers[0].url)
            try:
                await enqueue(redis, "880001", settings=settings)
                with short_failure():
                    await _finish_880001(redis, settings)
            finally:
                await redis.aclose()
    finally:
        for task in background:
            await task
        for server in servers:
            stop_redis(server)


async def _finish_880001(redis: Redis, settings: Settings) -> None:
    async with running_worker(settings) as worker:

        async def finished() -> bool:
            with contextlib.suppress(RedisError, OSError):
                r = await get_result(redis, "880001", settings=settings)
                return r is not None and r.status == "FINISHED"
            return False

        await wait_until(finished, timeout=15, interval=0.2)
        assert worker.alive


async def test_worker_survives_connections_dropped_while_it_starts_jobs(
    redis_server: RedisServer,
) -> None:
    """A Redis restart (or a failover, or a proxy dropping idle connections) can cut any
    connection at any moment: while a job is claimed, while the runner reads or re-schedules a
    job, during a new connection's handshake. The worker must carry on."""
    async with simulator_in_process() as sim:
        sim.state.set_script("8810*", ["IN_PROGRESS"])
        settings = make_settings(
            redis_server.url, sim.base_url, poll_interval_seconds=0.05, poll_max_seconds=600.0
        )
        redis = Redis.from_url(redis_server.url)
        await redis.flushall()
        kill = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        try:
            await enqueue_many(redis, [f"8810{i:05d}" for i in range(2000)], settings=settings)
            with short_failure():
                async with running_worker(settings) as worker:
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 8
                    while loop.time() < deadline:
                        # Drop every other client's connection, as a restarting Redis would.
                        await redis.execute_command(*kill)
                        await asyncio.sleep(0.02)
                        if not worker.alive:
                            raise AssertionError("worker main loop ended")
                    # And it still works: a new container is checked and settled.
                    sim.state.set_script("8820001", ["FINISHED"])
                    await enqueue_many(redis, ["8820001"], settings=settings)

                    async def settled() -> bool:
                        r = await get_result(redis, "8820001", settings=settings)
                        return r is not None and r.status == "FINISHED"

                    await wait_until(settled, timeout=15, interval=0.1)
                    assert worker.alive
        finally:
            await redis.aclose()
