"""The access token never reaches a log line, a result, an event or any other Redis key."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.conftest import TEST_TOKEN, wait_until
from worker import enqueue_many, get_result

OTHER_TOKEN = "EAAotherACCOUNTtoken9876543210zyx"


async def dump_everything(redis: Redis) -> bytes:
    """Every byte stored in Redis, whatever the key's type."""
    chunks: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        chunks.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            chunks.append(await redis.get(key) or b"")
        elif kind == "hash":
            for k, v in (await redis.hgetall(key)).items():  # type: ignore[misc]
                chunks += [k, v]
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                for k, v in fields.items():
                    chunks += [k, v]
        elif kind == "zset":
            chunks += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            chunks += await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            chunks += list(await redis.smembers(key))  # type: ignore[misc]
    return b"\n".join(chunks)


@pytest.mark.parametrize("auth_mode", ["query", "header"])
async def test_token_absent_from_logs_and_redis(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
    auth_mode: str,
) -> None:
    scripts = {
        "3001": ["IN_PROGRESS", "FINISHED"],
        "3002": ["token_expired"],
        "3003": ["drop", "drop", "drop", "garbage", "ERROR:UNKNOWN"],
        "3004": ["500", "html", "notfound"],
        "3005": ["slow:3:FINISHED", "permission"],
        "3006": ["throttle", "429", "IN_PROGRESS", "FINISHED"],
    }
    for cid, steps in scripts.items():
        sim.state.set_script(cid, steps)
    # The window is fixed at enqueue: long enough for the worker process to start.
    settings = settings.model_copy(update={"poll_max_seconds": 10.0})
    # The expired token belongs to its own account, so it fails only that account's checks.
    await enqueue_many(redis, [c for c in scripts if c != "3002"], settings=settings)
    await enqueue_many(redis, ["3002"], account="555", settings=settings)
    await redis.xadd(f"{settings.key_prefix}:intake", {"container_id": "not-a-number"})
    env = dict(
        project_env,
        THREADS_API_BASE_URL=settings.threads_api_base_url,
        THREADS_ACCESS_TOKEN=TEST_TOKEN,
        THREADS_ACCESS_TOKEN_555=OTHER_TOKEN,
        THREADS_AUTH_MODE=auth_mode,
        POLL_INTERVAL_SECONDS="0.3",
        POLL_MAX_SECONDS="10",
        HTTP_TIMEOUT_SECONDS="1",
        JOB_TIMEOUT_SECONDS="5",
        LOG_LEVEL="DEBUG",
    )
    log_path = tmp_path / "worker.log"
    proc = await start_worker(env, log_path)
    try:

        async def all_final() -> bool:
            for cid in scripts:
                r = await get_result(redis, cid, settings=settings)
                if r is None or not r.final:
                    return False
            return True

        await wait_until(all_final, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    log = log_path.read_text()
    assert "final state" in log and "3002" in log  # the log did record the run
    assert "access token rejected" in log and "555" in log
    secret_bits = [TEST_TOKEN, TEST_TOKEN[4:20], OTHER_TOKEN, OTHER_TOKEN[3:19]]
    for bit in secret_bits:
        assert bit not in log
        assert bit.encode() not in await dump_everything(redis)
    # The simulator did receive the token the way it was asked to.
    r3001 = await get_result(redis, "3001", settings=settings)
    assert sim.state.calls_for("3001").count == 2, r3001
    failed = await get_result(redis, "3002", settings=settings)
    assert failed is not None and failed.status == "FAILED" and failed.last_error_code == 190
