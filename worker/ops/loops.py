"""One supervisor for the background loops of a process: ``every(name, period, once)``.

The worker's reconcile sweep, quota refresh, per-minute stats flush, heartbeat and intake
consumers, and ``serve``'s gauge sampler, each run one round again and again until they are
cancelled. They share the rules written here once: a round that fails is logged with the loop's
name and the loop goes on (a Redis outage must not end a worker), a cancel ends the loop at once
whatever it is doing (the process is stopping), and the pause is counted from the end of a round
(a slow round never makes rounds pile up). No jitter: none of these loops had any, and the ones
that must not run on every replica at once take a lock in Redis instead (the quota refresh).

Here in ``ops`` rather than ``runtime`` so that ``worker.web`` (which may not import the runtime)
runs its sampler on it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import NoReturn

log = logging.getLogger("threads_poller.loops")

# A round: its coroutine returns None (wait ``period``) or how long to wait before the next one
# (the intake consumer's: no pause after a round that took entries).
Round = Callable[[], Awaitable[float | None]]


def failure_delay(period: float, backoff: tuple[float, float] | None, failures: int) -> float:
    """The pause after the ``failures``-th failed round in a row: ``period``, or with
    ``backoff=(first, most)`` first, twice that, ... up to ``most``. Pure."""
    if backoff is None:
        return period
    first, most = backoff
    return min(first * 2.0 ** min(failures - 1, 60), most)


async def every(
    name: str,
    period: float,
    once: Round,
    *,
    wait_first: bool = False,
    backoff: tuple[float, float] | None = None,
    logger: logging.Logger = log,
    level: int = logging.ERROR,
    extra: Mapping[str, object] | None = None,
) -> NoReturn:
    """Run ``once`` until cancelled, pausing ``period`` seconds after each round (or what the
    round returned), and a period first when ``wait_first``.

    A round that raises is logged on ``logger`` at ``level`` with its traceback as
    ``"<name> error; next round in <s>s"`` (``extra`` added to the record's fields), and the next
    round comes after ``period``, or after an exponential ``backoff=(first, most)`` while rounds
    keep failing. ``asyncio.CancelledError`` is never caught: a cancel, in a round or in a pause,
    ends the loop at once.
    """
    failures = 0
    if wait_first:
        await asyncio.sleep(period)
    while True:
        try:
            asked = await once()
        except Exception:
            failures += 1
            delay = failure_delay(period, backoff, failures)
            logger.log(
                level,
                "%s error; next round in %.1fs",
                name,
                delay,
                exc_info=True,
                extra={"loop": name, **(extra or {})},
            )
        else:
            failures = 0
            delay = period if asked is None else asked
        await asyncio.sleep(delay)
