"""Shared fixtures of tests/unit, tests/integration and tests/system: a real redis-server on a
free port, the simulator, settings, a worker (processes, ports and servers: bench/harness.py).

No Redis mocks: every test that touches Redis talks to a real ``redis-server`` started here.
Unit tests may use the plain helpers (``make_settings``, ``TEST_TOKEN``) but no fixture that
starts something: tests/unit/conftest.py refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bench.harness import HOST, RedisServer, simulator_in_process, start_redis, stop_redis
from config import Settings, load_settings
from simulator import RunningSimulator
from worker.runtime.app import PollerWorker, build_worker
from worker.store.keys import Keys

TEST_TOKEN = "EAAtestTOKENsecret0123456789abcdef"

TESTS = Path(__file__).resolve().parent
FOLDERS = ("unit", "integration", "system")  # the order they run in: fastest first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test lives in one of FOLDERS; run unit, then integration, then system (pytest's own
    order within each), so that ``pytest -x`` stops on a broken unit test within seconds."""
    for item in items:
        if _folder(item) not in FOLDERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test lives in tests/unit, tests/integration or tests/system"
            )
    items.sort(key=lambda item: FOLDERS.index(_folder(item)))


def _folder(item: pytest.Item) -> str:
    path = item.path.resolve()
    return path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else FOLDERS[-1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_redis(server)


@pytest.fixture(autouse=True)
async def _watch_declared_keys(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """With ``TP_WATCH_KEYS=1``, every test that uses ``redis_server`` also checks that each
    key a script touched was among its KEYS (tests/declared_keys.py)."""
    if os.environ.get("TP_WATCH_KEYS") != "1" or "redis_server" not in request.fixturenames:
        yield
        return
    from tests.declared_keys import KeyWatch, describe

    server: RedisServer = request.getfixturevalue("redis_server")
    async with KeyWatch(HOST, server.port) as watch:
        yield
    found = await watch.violations()
    assert not found, describe(found)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with simulator_in_process() as running:
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
        # No /metrics server unless a test asks for one (tests/integration/test_metrics.py): no
        # fixed port.
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
