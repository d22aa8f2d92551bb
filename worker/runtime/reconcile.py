"""A periodic sweep for live polls whose job is gone.

The runner never deletes a live poll's job, so only Redis itself can lose one: a failover to a
replica that had not received the last writes, an AOF that was not fsynced before a crash. Such a
container would stay non-final forever. The sweep looks at polls still in flight well past their
window and gives each one without a job its job back (``resume.lua``, a no-op for a poll that has
one); that run then ends the poll through the planner like any other (TIMED_OUT, saying why, when
the window is over).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from worker.ops.loops import every
from worker.store.results import ResultStore

log = logging.getLogger("threads_poller.reconcile")


async def reconcile_once(store: ResultStore, *, now: float, grace_seconds: float) -> int:
    """Resume polls past their deadline + grace whose job is gone. Returns how many."""
    resumed = 0
    for container_id in await store.inflight_past(now - grace_seconds):
        current = await store.load(container_id)
        if current is None or current.final:
            await store.forget_inflight(container_id)
            continue
        outcome = await store.resume(current)
        if outcome != "ok":
            resumed += 1
            log.warning(
                "poll without a job resumed (%s)", outcome, extra={"container_id": container_id}
            )
    return resumed


async def reconcile_forever(
    store: ResultStore,
    *,
    period_seconds: float,
    grace_seconds: float,
    republish: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Every ``period_seconds``: the sweep, and ``republish`` (the workers' config for
    producers), since a Redis that came back empty has forgotten it and producers would fall
    back to their own pacing and refuse every webhook URL until a worker restarted. A failed
    round (a Redis outage) is logged and the next one tries again."""

    async def round_() -> None:
        if republish is not None:
            await republish()
        seconds, micros = await store.redis.time()
        await reconcile_once(store, now=float(seconds) + micros / 1e6, grace_seconds=grace_seconds)

    await every("reconcile", period_seconds, round_, logger=log)
