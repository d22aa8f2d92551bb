"""``worker.ops.loops.every``: the one supervisor of the background loops goes on after a failed
round (saying which loop failed), ends at once on a cancel, and keeps its pauses."""

from __future__ import annotations

import asyncio
import logging

import pytest

from worker.ops.loops import every, failure_delay


async def test_rounds_follow_each_other_until_cancelled() -> None:
    rounds = 0

    async def once() -> None:
        nonlocal rounds
        rounds += 1

    task = asyncio.create_task(every("t", 0.01, once))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= rounds <= 25


async def test_a_failed_round_is_logged_with_the_loop_name_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = 0
    third = asyncio.Event()

    async def once() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("Redis away")
        if rounds == 3:
            third.set()

    logger = logging.getLogger("threads_poller.test_loops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        task = asyncio.create_task(
            every("reconcile", 0.01, once, logger=logger, extra={"producer": "p"})
        )
        await asyncio.wait_for(third.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [record] = caplog.records
    assert record.getMessage() == "reconcile error; next round in 0.0s"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and "Redis away" in str(record.exc_info[1])
    assert record.__dict__["loop"] == "reconcile" and record.__dict__["producer"] == "p"


@pytest.mark.parametrize("in_round", [True, False])
async def test_a_cancel_ends_the_loop_at_once_and_quietly(
    in_round: bool, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    async def once() -> None:
        started.set()
        if in_round:
            await asyncio.sleep(60)

    task = asyncio.create_task(every("t", 60, once))
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert not caplog.records


async def test_wait_first_pauses_before_the_first_round() -> None:
    rounds = 0

    async def once() -> None:
        nonlocal rounds
        rounds += 1

    task = asyncio.create_task(every("t", 0.2, once, wait_first=True))
    await asyncio.sleep(0.05)
    assert rounds == 0
    await asyncio.sleep(0.25)
    assert rounds >= 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_round_may_ask_for_its_own_pause() -> None:
    rounds = 0

    async def once() -> float | None:
        nonlocal rounds
        rounds += 1
        return 0.0  # busy: at once again (the period would be a minute)

    task = asyncio.create_task(every("t", 60, once))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rounds > 10


def test_failure_delay() -> None:
    assert failure_delay(5.0, None, 1) == failure_delay(5.0, None, 9) == 5.0
    backoff = (0.5, 30.0)
    assert [failure_delay(1.0, backoff, n) for n in range(1, 9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert failure_delay(1.0, backoff, 10_000) == 30.0
