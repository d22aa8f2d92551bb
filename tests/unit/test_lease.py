"""Short leases that live as long as the run (pure): the renewal schedule, when a run is cut off,
and ``RunDeadline`` bound to its lease (on an event loop of its own, no Redis). The lease against
a real redis-server: tests/integration/test_lease.py; against SIGKILLed worker processes:
tests/system/test_kill_rerun.py."""

from __future__ import annotations

import asyncio

import pytest

from config import Settings, SettingsError
from tests.helpers.settings import make_settings
from worker.core.lease import (
    DEFAULT_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    cutoff,
    lease_end,
    next_renewal_in,
    renew_period,
)
from worker.runtime.app import lease_seconds
from worker.store.queue import RunDeadline

URLS = ("redis://127.0.0.1:1/0", "http://127.0.0.1:9/v1.0")


def test_a_lease_is_renewed_every_third_of_it() -> None:
    assert renew_period(6.0) == pytest.approx(2.0)
    assert renew_period(MIN_LEASE_SECONDS) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="shorter than"):
        renew_period(0.2)


def test_the_next_renewal_is_a_period_after_the_last_was_sent() -> None:
    assert next_renewal_in(100.0, 100.5, 2.0) == pytest.approx(1.5)
    # Its reply took long, or the process was frozen: renew at once, not a period later.
    assert next_renewal_in(100.0, 103.0, 2.0) == 0.0
    assert lease_end(100.0, 6.0) == 106.0


def test_a_run_stops_at_its_timeout_or_its_lease_whichever_comes_first() -> None:
    # Renewed: the lease ends after the timeout, which decides.
    assert cutoff(due=160.0, lease_ends=106.0, holding=False, lost=False, now=100.0) == 106.0
    assert cutoff(due=103.0, lease_ends=106.0, holding=False, lost=False, now=100.0) == 103.0
    # Recording an answer in hand: the timeout waits, the lease does not.
    assert cutoff(due=103.0, lease_ends=106.0, holding=True, lost=False, now=100.0) == 106.0
    # The lock is someone else's: now, hold or not.
    assert cutoff(due=103.0, lease_ends=106.0, holding=True, lost=True, now=100.0) == 100.0
    # No lease known (a job made by hand): the timeout alone; held, nothing.
    assert cutoff(due=103.0, lease_ends=float("inf"), holding=False, lost=False, now=0) == 103.0
    assert cutoff(due=103.0, lease_ends=float("inf"), holding=True, lost=False, now=0) is None


def test_the_lease_is_short_whatever_the_job_timeout() -> None:
    """Issue 22: the lease was JOB_TIMEOUT_SECONDS + 2 (62 s), longer than Meta's one-minute
    interval, so a SIGKILL cost every in-flight poll a check."""
    default = make_settings(*URLS)
    assert default.lease_seconds == DEFAULT_LEASE_SECONDS == 6.0
    interval = Settings.model_fields["poll_interval_seconds"].default
    assert lease_seconds(default) == 6.0 < interval == 60.0
    long_runs = make_settings(*URLS, job_timeout_seconds=600, http_timeout_seconds=10)
    assert lease_seconds(long_runs) == 6.0
    # The settings refuse what the renewal period cannot serve (config imports no worker code:
    # the bound is written twice, and held equal here).
    bounds = [getattr(m, "ge", None) for m in Settings.model_fields["lease_seconds"].metadata]
    assert MIN_LEASE_SECONDS in bounds
    assert make_settings(*URLS, lease_seconds=MIN_LEASE_SECONDS).lease_seconds == 0.3
    with pytest.raises(SettingsError, match="LEASE_SECONDS"):
        make_settings(*URLS, lease_seconds=0.29)


async def _run_bound(
    deadline: RunDeadline, *, timeout_s: float, lease_s: float, body: object
) -> tuple[bool, float]:
    """Run ``body`` (a coroutine function) under a timeout bound to ``deadline``; whether it
    was cut off, and after how long."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(timeout_s) as timeout:
            deadline.bind(timeout, lease_end=t0 + lease_s)
            await body()  # type: ignore[operator]
    except TimeoutError:
        return True, loop.time() - t0
    return False, loop.time() - t0


def test_a_run_not_renewed_stops_when_its_lease_ends() -> None:
    async def main() -> tuple[bool, float, bool]:
        deadline = RunDeadline()
        cut, after = await _run_bound(
            deadline, timeout_s=30, lease_s=0.1, body=lambda: asyncio.sleep(5)
        )
        return cut, after, deadline.lease_over

    cut, after, over = asyncio.run(main())
    assert cut and after < 1.0 and over


def test_renewals_keep_a_run_past_many_lease_lengths_up_to_its_timeout() -> None:
    async def main() -> tuple[bool, float, bool]:
        deadline = RunDeadline()
        loop = asyncio.get_running_loop()

        async def renewing() -> None:
            while True:
                await asyncio.sleep(0.03)
                deadline.renewed(loop.time() + 0.1)

        renewer = asyncio.create_task(renewing())
        try:
            cut, after = await _run_bound(
                deadline, timeout_s=0.6, lease_s=0.1, body=lambda: asyncio.sleep(5)
            )
        finally:
            renewer.cancel()
        return cut, after, deadline.lease_over

    cut, after, over = asyncio.run(main())
    # Six lease lengths, then its own timeout ended it (not the lease).
    assert cut and 0.55 < after < 1.5 and not over


def test_a_hold_lasts_until_the_lease_as_last_renewed_ends() -> None:
    async def main() -> tuple[bool, float]:
        deadline = RunDeadline()
        loop = asyncio.get_running_loop()

        async def body() -> None:
            async with deadline.hold():
                deadline.expire()  # the run's time is up while it records
                await asyncio.sleep(0.05)
                deadline.renewed(loop.time() + 0.2)
                # A late reply of an older renewal does not shorten the lease.
                deadline.renewed(loop.time() + 0.01)
                await asyncio.sleep(5)

        return await _run_bound(deadline, timeout_s=30, lease_s=0.1, body=body)

    cut, after = asyncio.run(main())
    assert cut and 0.2 < after < 1.0


def test_a_lost_lease_ends_the_run_at_once_even_in_a_hold() -> None:
    async def main() -> tuple[bool, float, bool]:
        deadline = RunDeadline()

        async def body() -> None:
            async with deadline.hold():
                asyncio.get_running_loop().call_later(0.05, deadline.lose)
                await asyncio.sleep(5)

        cut, after = await _run_bound(deadline, timeout_s=30, lease_s=30, body=body)
        return cut, after, deadline.lease_lost

    cut, after, lost = asyncio.run(main())
    assert cut and after < 1.0 and lost


def test_a_loss_reported_before_the_run_is_bound_cuts_it_when_bound() -> None:
    async def main() -> tuple[bool, float]:
        deadline = RunDeadline()
        deadline.lose()  # the first renewal came while the run was still starting
        return await _run_bound(deadline, timeout_s=30, lease_s=30, body=lambda: asyncio.sleep(5))

    cut, after = asyncio.run(main())
    assert cut and after < 1.0


def test_a_renewal_answered_after_the_run_left_its_timeout_changes_nothing() -> None:
    """The renewal's reply comes while the run gives its job back (or after it ended): the
    runner's renewer must not fail on it (asyncio refuses to reschedule a finished timeout)."""

    async def main() -> bool:
        deadline = RunDeadline()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30) as timeout:
            deadline.bind(timeout, lease_end=loop.time() + 0.1)
            await asyncio.sleep(0)
            deadline.unbind()
        deadline.renewed(loop.time() + 6)
        deadline.lose()
        deadline.expire()
        async with deadline.hold():
            pass
        return deadline.lease_lost

    assert asyncio.run(main())
