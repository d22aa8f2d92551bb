"""Shared fixtures: a real redis-server on a free port, the simulator, settings, a worker.

No Redis mocks: every test that touches Redis talks to a real ``redis-server`` started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from config import Settings, load_settings
from simulator import RunningSimulator, run_simulator
from worker.runtime.app import PollerWorker, build_worker
from worker.store.keys import Keys

TEST_TOKEN = "EAAtestTOKENsecret0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host="127.0.0.1", port=self.port)


def start_redis(
    tmp: Path,
    *,
    appendonly: bool = False,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: run the README's test command (scripts/test.sh)"
        )
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp),
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(tmp / "redis.log"),
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, tmp, proc)
    deadline = time.monotonic() + 10
    while True:
        try:
            if server.client().ping():
                return server
        except redis_sync.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)


def stop_redis(server: RedisServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_redis(server)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(port=0) as running:
        yield running


def make_settings(redis_url: str, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "redis_url": redis_url,
        "threads_api_base_url": base_url,
        "threads_access_token": TEST_TOKEN,
        "poll_interval_seconds": 0.2,
        "poll_max_seconds": 1.0,
        "http_timeout_seconds": 1.0,
        "job_timeout_seconds": 5.0,
        "intake_claim_idle_seconds": 1.0,
        # Pacing is tested on its own (test_api_policy.py); elsewhere it would only add delay.
        "account_max_requests_per_second": 0,
        "throttle_backoff_seconds": 0.2,
        # No /metrics server unless a test asks for one (tests/test_metrics.py): no fixed port.
        "metrics_port": 0,
        "log_format": "json",
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(redis_server: RedisServer, sim: RunningSimulator) -> Settings:
    return make_settings(redis_server.url, sim.base_url)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **kwargs: Any) -> AsyncIterator[PollerWorker]:
    """The real worker, in this event loop; stopped like SIGTERM stops it."""
    worker = build_worker(settings, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.runner is not None or task.done(), timeout=10)
        yield worker
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
def project_env(redis_server: RedisServer) -> dict[str, str]:
    """Environment for running the CLI as a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADS_", "POLL_"))}
    env["REDIS_URL"] = redis_server.url
    env["LOG_FORMAT"] = "json"
    env["ACCOUNT_MAX_REQUESTS_PER_SECOND"] = "0"
    env["THROTTLE_BACKOFF_SECONDS"] = "0.3"
    env["METRICS_PORT"] = "0"
    return env
