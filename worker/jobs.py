"""The check job: one short arq run per API check; the wait between checks lives in Redis.

A run reads the container's hash, makes at most one API call, writes the outcome atomically and,
when another check is due, asks arq to run the same job again at that time (``Retry``). Runs are
at-least-once (arq re-runs a job whose worker died), so a run is harmless to repeat: a final state
is never overwritten and its event is emitted once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from arq import Retry

from api_client.client import ThreadsClient
from api_client.errors import MissingTokenError, ThreadsError
from api_client.models import ContainerStatus
from config import Settings
from worker.decisions import Decision, Schedule, decide, timed_out, window_closed
from worker.store import PollResult, ResultStore
from worker.tokens import TokenSource

log = logging.getLogger("threads_poller.check")


@dataclass
class PollerContext:
    """What every check needs; built once per worker process (``worker.app.startup``)."""

    settings: Settings
    store: ResultStore
    client: ThreadsClient
    tokens: TokenSource
    schedule: Schedule


async def check_container(ctx: dict[str, Any], container_id: str, generation: str) -> str:
    poller: PollerContext = ctx["poller"]
    started = time.time()
    current = await poller.store.load(container_id)
    if current is None or current.generation != generation:
        # The result expired or a newer poll (forced re-enqueue) replaced this one.
        log.info("stale check skipped", extra={"container_id": container_id})
        return "stale"
    if current.final:
        return current.status

    deadline = current.deadline_at or started
    if window_closed(poller.schedule, checks_made=current.checks, deadline=deadline, now=started):
        decision = timed_out(current.last_api_status or current.status, current.error_message)
        await _record(poller, current, decision, checks=current.checks, checked_at=None, ctx=ctx)
        return decision.status

    outcome, api_ms = await _call_api(poller, current)
    now = time.time()
    checks = current.checks + 1
    decision = decide(
        poller.schedule,
        outcome,
        checks_made=checks,
        deadline=deadline,
        now=now,
        previous_status=current.status,
        previous_error_message=current.error_message,
    )
    written = await _record(
        poller, current, decision, checks=checks, checked_at=now, ctx=ctx, api_ms=api_ms
    )
    if written and not decision.final and decision.next_check_at is not None:
        raise Retry(defer=max(0.0, decision.next_check_at - time.time()))
    return decision.status


async def _call_api(
    poller: PollerContext, current: PollResult
) -> tuple[ContainerStatus | ThreadsError, float]:
    token = await poller.tokens.token_for(current.account)
    if not token:
        who = f"account {current.account}" if current.account else "the default account"
        return MissingTokenError(f"no access token configured for {who}"), 0.0
    t0 = time.perf_counter()
    try:
        outcome: ContainerStatus | ThreadsError = await poller.client.get_container_status(
            current.container_id, token=token
        )
    except ThreadsError as exc:
        outcome = ThreadsClient.scrub(exc, token)
    return outcome, (time.perf_counter() - t0) * 1000


async def _record(
    poller: PollerContext,
    current: PollResult,
    decision: Decision,
    *,
    checks: int,
    checked_at: float | None,
    ctx: dict[str, Any],
    api_ms: float | None = None,
) -> bool:
    now = time.time()
    outcome, _ = await poller.store.record(
        current, decision, checks=checks, checked_at=checked_at, now=now
    )
    extra: dict[str, Any] = {
        "container_id": current.container_id,
        "job_try": ctx.get("job_try"),
        "status": decision.status,
        "final": decision.final,
        "checks": checks,
    }
    if api_ms is not None:
        extra["api_ms"] = round(api_ms, 1)
    if decision.error is not None:
        extra["error"] = str(decision.error)
        extra["error_kind"] = decision.error_kind
    if outcome != "ok":
        log.info("check outcome not written: %s", outcome, extra=extra)
        return False
    log.info("final state" if decision.final else "checked", extra=extra)
    return True
