"""Per-worker heartbeats in Redis and ``threads-poller health`` (the image's HEALTHCHECK). How
beats are judged, pure: tests/unit/test_health.py."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from redis.asyncio import Redis

from bench.harness import RedisServer, free_port
from config import Settings
from tests.cli_helpers import run_cli
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from worker.ops.health import BEAT_SECONDS, TTL_SECONDS, Beat, Heartbeat, check, live_beats
from worker.store.keys import Keys


async def test_heartbeat_in_redis(redis: Redis) -> None:
    keys = Keys("hb-test")
    state = {"accepting": True}
    hb = Heartbeat(
        redis, keys, "host-a-1-abc", host="host-a", probe=lambda: (state["accepting"], {"x": 1})
    )
    written = await hb.beat()
    ttl_ms = await redis.pttl(keys.worker_heartbeat("host-a-1-abc"))
    assert TTL_SECONDS * 1000 - 1000 < ttl_ms <= TTL_SECONDS * 1000
    assert await redis.zscore(keys.workers, "host-a-1-abc") == written.beat_at
    now, beats = await live_beats(redis, keys)
    assert [b.name for b in beats] == ["host-a-1-abc"] and beats[0].jobs == {"x": 1}
    assert (await check(redis, keys, host="host-a")).healthy
    assert not (await check(redis, keys, host="host-b")).healthy
    # Another prefix is another deployment: it does not see this worker.
    assert not (await check(redis, Keys("other"), host=None)).healthy

    # A worker told to stop says so in its next beat.
    state["accepting"] = False
    await hb.beat()
    assert "shutting down" in (await check(redis, keys, host="host-a")).message

    # A key past its TTL, or a beat older than its own TTL, is not a live worker.
    state["accepting"] = True
    await hb.beat()
    await redis.delete(keys.worker_heartbeat("host-a-1-abc"))
    assert not (await check(redis, keys, host="host-a")).healthy
    stale = Beat("old", "host-a", 2, now - 100, now - TTL_SECONDS - 1, TTL_SECONDS)
    await redis.set(keys.worker_heartbeat("old"), stale.to_json())
    await redis.zadd(keys.workers, {"old": now})
    assert not (await check(redis, keys, host="host-a")).healthy

    await hb.beat()
    await hb.stop()
    assert await redis.exists(keys.worker_heartbeat("host-a-1-abc")) == 0
    assert await redis.zscore(keys.workers, "host-a-1-abc") is None


async def test_heartbeat_loop_beats_and_reports_drain_at_once(redis: Redis) -> None:
    keys = Keys("hb-loop")
    state = {"accepting": True}
    hb = Heartbeat(
        redis, keys, "w1", host="h", beat_seconds=0.2, probe=lambda: (state["accepting"], {})
    )
    task = asyncio.create_task(hb.run())
    try:
        await wait_until(lambda: hb.beats >= 3, timeout=5)
        # With the default 5 s beat the drain would still show within a poll (0.5 s).
        slow = Heartbeat(redis, keys, "w2", host="h2", probe=lambda: (state["accepting"], {}))
        slow_task = asyncio.create_task(slow.run())
        await slow.beat()
        state["accepting"] = False

        async def draining() -> bool:
            return "shutting down" in (await check(redis, keys, host="h2")).message

        await wait_until(draining, timeout=BEAT_SECONDS / 2)
        slow_task.cancel()
    finally:
        task.cancel()


async def test_heartbeat_reports_the_runner(settings: Settings, redis: Redis, keys: Keys) -> None:
    async with running_worker(settings) as worker:
        assert worker.runner is not None
        _, beats = await live_beats(redis, keys)
        (mine,) = [b for b in beats if b.name == worker.runner.name]
        assert mine.accepting
        assert set(mine.jobs) == {
            "started",
            "settled",
            "failed",
            "released",
            "redis_errors",
            "given_up",
            "ongoing",
            "slots",  # the job slots: saturation = ongoing / slots (issue 13)
            "webhook_ongoing",  # the deliveries', apart (issue 22)
            "webhook_slots",
        }
        assert mine.jobs["slots"] == min(settings.worker_max_jobs, settings.api_max_concurrency)
        assert mine.jobs["webhook_slots"] == settings.webhook_concurrency
        worker.runner.stop()
        assert not worker.runner.accepting


async def test_in_process_worker_health_follows_its_life(
    settings: Settings, redis: Redis, keys: Keys
) -> None:
    host = socket.gethostname()
    assert not (await check(redis, keys, host=host)).healthy
    async with running_worker(settings):
        await wait_until(lambda: _healthy(redis, keys, host), timeout=10)
        health = await check(redis, keys, host=host)
        assert health.beats[0].pid > 0 and health.beats[0].name.startswith(host + "-")
    # A clean stop removes the heartbeat at once, not after its TTL.
    assert not (await check(redis, keys, host=host)).healthy
    assert await redis.zcard(keys.workers) == 0


async def _healthy(redis: Redis, keys: Keys, host: str) -> bool:
    return (await check(redis, keys, host=host)).healthy


async def test_health_cli_exit_codes(
    settings: Settings, redis: Redis, redis_server: RedisServer, project_env: dict[str, str]
) -> None:
    code, out, err = await run_cli("health", env=project_env)
    assert code == 1 and out == ""
    assert err.strip() == (
        f"threads-poller: unhealthy: no worker heartbeat from host {socket.gethostname()}"
    )
    hb = Heartbeat(redis, Keys(settings.key_prefix), "elsewhere-1", host="elsewhere")
    await hb.beat()
    code, _, err = await run_cli("health", env=project_env)
    assert code == 1 and "1 live worker(s) elsewhere" in err
    code, out, _ = await run_cli("health", "--any", env=project_env)
    assert code == 0 and out.startswith("healthy: worker elsewhere-1 pid ")
    code, out, _ = await run_cli("health", "--host", "elsewhere", env=project_env)
    assert code == 0

    # Host networking: a beat with this host's name from a process not in this PID namespace
    # (here: a pid and life that /proc does not show) does not make this container healthy.
    host = socket.gethostname()
    ghost = Heartbeat(redis, Keys(settings.key_prefix), f"{host}-ghost", host=host)
    ghost.pid, ghost.proc = 999_999, "another-boot:1"
    await ghost.beat()
    code, _, err = await run_cli("health", env=project_env)
    assert code == 1 and "no worker process in this container beats" in err
    code, _, _ = await run_cli("health", "--host", host, env=project_env)
    assert code == 0  # --host trusts the name, as documented
    # A beat from a live process here (this test process: same PID namespace) counts.
    await Heartbeat(redis, Keys(settings.key_prefix), f"{host}-real", host=host).beat()
    code, out, _ = await run_cli("health", env=project_env)
    assert code == 0 and f"worker {host}-real pid {os.getpid()}" in out

    # Redis down (nothing listens on the port): exit 4, one line naming it.
    dead = dict(project_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = await run_cli("health", env=dead)
    assert code == 4 and "cannot reach Redis" in err and len(err.strip().splitlines()) == 1


async def test_health_cli_liveness(
    settings: Settings, redis: Redis, project_env: dict[str, str]
) -> None:
    """``health --liveness`` (the Kubernetes liveness probe): fails when no worker here beats,
    passes while one drains, and passes when Redis cannot be reached (where plain ``health``,
    the readiness probe, exits 4); a Redis that refuses the credentials still fails."""
    code, _, err = await run_cli("health", "--liveness", env=project_env)
    assert code == 1 and "no worker heartbeat" in err
    host = socket.gethostname()
    hb = Heartbeat(
        redis, Keys(settings.key_prefix), f"{host}-drain", host=host, probe=lambda: (False, {})
    )
    await hb.beat()
    code, _, err = await run_cli("health", env=project_env)
    assert code == 1 and "shutting down" in err
    code, out, _ = await run_cli("health", "--liveness", env=project_env)
    assert code == 0 and out.strip() == f"alive: worker {host}-drain is shutting down (draining)"

    dead = dict(project_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = await run_cli("health", "--liveness", env=dead)
    assert code == 0 and err == ""
    assert out.startswith("alive (not verified): cannot reach Redis at redis://127.0.0.1:")
    code, _, _ = await run_cli("health", env=dead)
    assert code == 4

    # A user that does not exist: WRONGPASS, from the shared server left as it is.
    wrong = dict(
        project_env,
        REDIS_URL=project_env["REDIS_URL"].replace("redis://", "redis://nobody:wrong-password@"),
    )
    code, _, err = await run_cli("health", "--liveness", env=wrong)
    assert code == 4 and "refused the credentials" in err
    assert "wrong-password" not in err


async def test_health_cli_gives_up_on_a_silent_redis(project_env: dict[str, str]) -> None:
    """A Redis that accepts the connection but never answers: exit 4 in time, not a hang."""
    held: list[asyncio.StreamWriter] = []  # keep the connections open, and silent

    def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        env = dict(project_env, REDIS_URL=f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        code, _, err = await run_cli("health", "--redis-timeout", "1", env=env, timeout=20)
        elapsed = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        server.close()
    assert held, "the health check did connect"
    assert code == 4 and "cannot reach Redis" in err and "TimeoutError" in err
    assert elapsed < 10
