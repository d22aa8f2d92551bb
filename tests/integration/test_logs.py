"""What the worker logs: a line per final state at INFO, a line per check only at DEBUG.

A log line per check costs about a tenth of a check's CPU at full rate (README, performance), so
INFO keeps to final states and anomalies.
"""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import final_of
from tests.helpers.worker import running_worker
from worker import enqueue_many


async def run_two_checks(redis: Redis, settings: Settings, sim: RunningSimulator) -> None:
    sim.state.set_script("7100001", ["IN_PROGRESS", "FINISHED"])
    await enqueue_many(redis, ["7100001"], settings=settings)

    async with running_worker(settings):
        await final_of(redis, settings, "7100001", timeout=10)


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
