"""A periodic sweep for polls whose arq job vanished (expired key, lost Redis write, arq's own
max-tries). Without it such a container would stay non-final forever; with it, it ends as
TIMED_OUT with a reason, and its event is emitted like any other."""

from __future__ import annotations

import asyncio
import logging
import time

from worker.decisions import timed_out
from worker.errors import LostJobError
from worker.store import ResultStore

log = logging.getLogger("threads_poller.reconcile")


async def reconcile_once(store: ResultStore, *, grace_seconds: float) -> int:
    """Settle containers past their deadline + grace whose job is gone. Returns how many."""
    settled = 0
    for container_id in await store.inflight_past(time.time() - grace_seconds):
        current = await store.load(container_id)
        if current is None or current.final:
            await store.forget_inflight(container_id)
            continue
        if await store.job_exists(current):
            continue  # late, not lost: the job will settle it
        decision = timed_out(
            current.last_api_status or current.status,
            current.error_message,
            error=LostJobError("the check job disappeared before the window ended"),
        )
        outcome, _ = await store.record(
            current, decision, checks=current.checks, checked_at=None, now=time.time()
        )
        if outcome == "ok":
            settled += 1
            log.warning("poll with a lost job settled", extra={"container_id": container_id})
    return settled


async def reconcile_forever(
    store: ResultStore, *, period_seconds: float, grace_seconds: float
) -> None:
    while True:
        try:
            await reconcile_once(store, grace_seconds=grace_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A Redis outage must not kill the worker; the next round tries again.
            log.exception("reconcile round failed")
        await asyncio.sleep(period_seconds)
