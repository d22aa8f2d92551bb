"""What the worker logs: a line per final state at INFO, a line per check only at DEBUG.

A log line per check costs about a tenth of a check's CPU at full rate (README, performance), so
INFO keeps to final states and anomalies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from config import LogFormat, Settings
from simulator import RunningSimulator
from tests.conftest import running_worker, wait_until
from worker import enqueue_many, get_result
from worker.ops.logs import setup_logging


async def run_two_checks(redis: Redis, settings: Settings, sim: RunningSimulator) -> None:
    sim.state.set_script("7100001", ["IN_PROGRESS", "FINISHED"])
    await enqueue_many(redis, ["7100001"], settings=settings)

    async def final() -> bool:
        r = await get_result(redis, "7100001", settings=settings)
        return r is not None and r.final

    async with running_worker(settings):
        await wait_until(final, timeout=10)


def check_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "threads_poller.check" and r.getMessage() in ("checked", "final state")
    ]


async def test_info_logs_the_final_state_only(
    redis: Redis, settings: Settings, sim: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await run_two_checks(redis, settings, sim)
    lines = check_lines(caplog)
    assert [r.getMessage() for r in lines] == ["final state"]
    assert lines[0].levelno == logging.INFO
    assert lines[0].__dict__["status"] == "FINISHED" and lines[0].__dict__["checks"] == 2


async def test_debug_logs_every_check(
    redis: Redis, settings: Settings, sim: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await run_two_checks(redis, settings, sim)
    lines = check_lines(caplog)
    assert [(r.getMessage(), r.levelno) for r in lines] == [
        ("checked", logging.DEBUG),
        ("final state", logging.INFO),
    ]
    assert lines[0].__dict__["status"] == "IN_PROGRESS" and "next_in_s" in lines[0].__dict__


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, arq_log = logging.getLogger(), logging.getLogger("arq.worker")
    saved = (list(root.handlers), root.level, arq_log.level, list(arq_log.filters))
    yield
    root.handlers[:], arq_log.filters[:] = saved[0], saved[3]
    root.setLevel(saved[1])
    arq_log.setLevel(saved[2])


def test_arq_info_lines_are_not_built_below_debug(restore_logging: None) -> None:
    arq_log = logging.getLogger("arq.worker")
    setup_logging(LogFormat.JSON, "INFO")
    # arq's per-job "→ job" / "← job" records would be built and then dropped: skip them.
    assert not arq_log.isEnabledFor(logging.INFO)
    assert arq_log.isEnabledFor(logging.WARNING)  # its failures still show
    setup_logging(LogFormat.JSON, "DEBUG")
    assert arq_log.isEnabledFor(logging.DEBUG)
