"""Shared fixtures and hooks of tests/unit, tests/integration and tests/system: a real
redis-server on a free port, the simulator, settings, the CLI's environment (processes, ports
and servers: bench/harness.py).

Only fixtures and hooks live here; plain helpers (``make_settings``, ``TEST_TOKEN``,
``running_worker``, ``wait_until``, ...) are in tests/helpers/, which is where tests import them
from (tests/unit/test_test_helpers.py refuses ``from tests.conftest import``).

No Redis mocks: every test that touches Redis talks to a real ``redis-server`` started here.
Unit tests may use the plain helpers but no fixture that starts something:
tests/unit/conftest.py refuses them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from bench.harness import HOST, RedisServer, simulator_in_process, start_redis, stop_redis
from config import Settings
from simulator import RunningSimulator
from tests.helpers.env import project_environment
from tests.helpers.settings import make_settings
from worker.store.keys import Keys

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
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session (raw calls to the simulator or a server under test)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with simulator_in_process() as running:
        yield running


@pytest.fixture
def settings(redis_server: RedisServer, sim: RunningSimulator) -> Settings:
    return make_settings(redis_server.url, sim.base_url)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture
def project_env(redis_server: RedisServer) -> dict[str, str]:
    """Environment for running the CLI as a subprocess."""
    return project_environment(redis_server.url)
