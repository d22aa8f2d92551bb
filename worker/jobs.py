"""The check job: one short arq run per API check; the wait between checks lives in Redis.

A run reads the container's hash, makes at most one API call, writes the outcome atomically and,
when another check is due, asks arq to run the same job again at that time (``Retry``). Runs are
at-least-once (arq re-runs a job whose worker died), so a run is harmless to repeat: a final state
is never overwritten and its event is emitted once.

Before calling the API a run consults the account's shared state: a token the API already
rejected fails the container without a call; a throttled account postpones the check without
spending it; the per-account pacing may hold the call back a little.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from arq import Retry

from api_client.client import ThreadsClient
from api_client.errors import GraphAPIError, MissingTokenError, ThreadsError
from api_client.models import ContainerStatus
from api_client.policy import ErrorKind, classify
from config import Settings
from worker import metrics
from worker.accounts import AccountState, AccountStore
from worker.decisions import (
    Decision,
    Schedule,
    decide,
    decide_throttled,
    effective_deadline,
    timed_out,
    window_closed,
)
from worker.errors import RejectedTokenError
from worker.store import PollResult, ResultStore
from worker.tokens import DEFAULT_ACCOUNT, TokenSource, fingerprint

log = logging.getLogger("threads_poller.check")

# Pacing waits up to this long inside the job; a longer wait gives the job slot back (Retry).
MAX_PACE_SLEEP_SECONDS = 1.0


@dataclass
class PollerContext:
    """What every check needs; built once per worker process (``worker.app.startup``)."""

    settings: Settings
    store: ResultStore
    accounts: AccountStore
    client: ThreadsClient
    tokens: TokenSource
    schedule: Schedule
    api_slots: asyncio.Semaphore


def token_hint(account: str) -> str:
    where = (
        "THREADS_ACCESS_TOKEN"
        if account == DEFAULT_ACCOUNT
        else f"THREADS_TOKENS_FILE (or THREADS_ACCESS_TOKEN_{account})"
    )
    return (
        f"the access token of account {account} was rejected: put a valid token in {where}; "
        "checks of this account resume with the new token, and failed containers can be "
        "enqueued again with --force"
    )


async def check_container(ctx: dict[str, Any], container_id: str, generation: str) -> str:
    poller: PollerContext = ctx["poller"]
    settings = poller.settings
    started = time.time()
    ctx[metrics.RUN_STARTED_KEY] = started  # for the timings of the check log line
    current = await poller.store.load(container_id)
    if current is None or current.generation != generation:
        # The result expired or a newer poll (forced re-enqueue) replaced this one.
        log.info(
            "stale check skipped",
            extra={"container_id": container_id, "job_try": ctx.get("job_try"), "status": "stale"},
        )
        return "stale"
    if current.final:
        return current.status

    deadline = effective_deadline(
        current.deadline_at or started, current.throttle_delay, settings.throttle_max_delay_seconds
    )
    if window_closed(poller.schedule, checks_made=current.checks, deadline=deadline, now=started):
        decision = timed_out(current.last_api_status or current.status, current.error_message)
        return await _finish(poller, current, decision, checks=current.checks, ctx=ctx)

    account = current.account or DEFAULT_ACCOUNT
    token = await poller.tokens.token_for(current.account)
    state = await poller.accounts.load(account)
    if not token or state.token_rejected_fp == fingerprint(token):
        error: MissingTokenError = (
            MissingTokenError(f"no access token configured for account {account}")
            if not token
            else RejectedTokenError(f"not checked: {state.token_rejected_reason}")
        )
        decision = decide(
            poller.schedule, error, checks_made=current.checks, deadline=deadline, now=started,
            previous_status=current.status,
        )  # fmt: skip
        decision = dataclasses.replace(decision, hint=token_hint(account))
        return await _finish(poller, current, decision, checks=current.checks, ctx=ctx)

    if state.throttled_until > started:
        decision = _throttled(poller, current, started, state.throttled_until, None)
        return await _finish(poller, current, decision, checks=current.checks, ctx=ctx)

    wait = await poller.accounts.pace(
        account,
        per_second=settings.account_max_requests_per_second,
        max_wait=MAX_PACE_SLEEP_SECONDS,
    )
    if wait > MAX_PACE_SLEEP_SECONDS:
        raise Retry(defer=wait)  # not a check: nothing to record
    if wait > 0:
        await asyncio.sleep(wait)

    async with poller.api_slots:
        outcome, api_ms = await _call_api(poller, current.container_id, token)
    now = time.time()
    kind = classify(outcome) if isinstance(outcome, ThreadsError) else None
    paused_until = await _account_bookkeeping(poller, account, state, outcome, kind, now)

    if kind is ErrorKind.THROTTLED:
        assert isinstance(outcome, ThreadsError)
        decision = _throttled(poller, current, now, paused_until, outcome)
        return await _finish(
            poller, current, decision, checks=current.checks, checked_at=now, ctx=ctx, api_ms=api_ms
        )

    if kind is ErrorKind.TOKEN:
        assert isinstance(outcome, ThreadsError)
        code = f"{outcome.code}/{outcome.subcode}" if isinstance(outcome, GraphAPIError) else ""
        if await poller.accounts.reject_token(account, fingerprint(token), str(outcome), code):
            # Once per token, not once per container: one bad token can fail thousands.
            log.error(
                "access token rejected: %s", token_hint(account),
                extra={"account": account, "error": str(outcome), "container_id": container_id},
            )  # fmt: skip

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
    if kind is ErrorKind.TOKEN:
        decision = dataclasses.replace(decision, hint=token_hint(account))
    return await _finish(
        poller, current, decision, checks=checks, checked_at=now, ctx=ctx, api_ms=api_ms
    )


def _throttled(
    poller: PollerContext,
    current: PollResult,
    now: float,
    paused_until: float,
    error: ThreadsError | None,
) -> Decision:
    return decide_throttled(
        poller.schedule,
        now=now,
        paused_until=paused_until,
        deadline=current.deadline_at or now,
        throttle_delay=current.throttle_delay,
        max_delay=poller.settings.throttle_max_delay_seconds,
        previous_status=current.status,
        previous_error_message=current.error_message,
        error=error,
    )


async def _account_bookkeeping(
    poller: PollerContext,
    account: str,
    state: AccountState,
    outcome: ContainerStatus | ThreadsError,
    kind: ErrorKind | None,
    now: float,
) -> float:
    """Update the account's throttling state; returns until when its checks pause (0: none)."""
    settings = poller.settings
    usage = outcome.usage
    regain = usage.regain_seconds if usage else 0.0
    near_limit = usage is not None and (
        usage.max_percent >= settings.usage_throttle_percent or regain > 0
    )
    if kind is ErrorKind.THROTTLED or near_limit:
        code = str(outcome.code) if isinstance(outcome, GraphAPIError) else "usage"
        until = await poller.accounts.note_throttle(
            account,
            now=now,
            base=settings.throttle_backoff_seconds,
            cap=settings.throttle_backoff_max_seconds,
            at_least=now + regain if regain else 0.0,
            code=code,
        )
        log.warning(
            "account throttled; its checks pause for %.1fs", until - now,
            extra={"account": account, "code": code,
                   "usage_percent": usage.max_percent if usage else None},
        )  # fmt: skip
        return until
    if state.throttle_level > 0:
        await poller.accounts.clear_throttle(account)
    return 0.0


async def _call_api(
    poller: PollerContext, container_id: str, token: str
) -> tuple[ContainerStatus | ThreadsError, float]:
    t0 = time.perf_counter()
    try:
        outcome: ContainerStatus | ThreadsError = await poller.client.get_container_status(
            container_id, token=token
        )
    except ThreadsError as exc:
        outcome = ThreadsClient.scrub(exc, token)
    metrics.observe_api_call(outcome, time.perf_counter() - t0)
    return outcome, (time.perf_counter() - t0) * 1000


async def _finish(
    poller: PollerContext,
    current: PollResult,
    decision: Decision,
    *,
    checks: int,
    ctx: dict[str, Any],
    checked_at: float | None = None,
    api_ms: float | None = None,
) -> str:
    """Record the decision; schedule the next check if there is one."""
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
    if decision.next_check_at is not None:
        extra["next_in_s"] = round(decision.next_check_at - now, 3)
    if not decision.spent:
        extra["throttled"] = True
    if decision.error is not None:
        extra["error"] = str(decision.error)
        extra["error_kind"] = decision.error_kind
    timings = metrics.check_timings(ctx, current, now)
    extra.update(timings)
    metrics.observe_check(
        decision, checked=api_ms is not None, written=outcome == "ok", lag_s=timings.get("lag_s")
    )
    if outcome != "ok":
        log.info("check outcome not written: %s", outcome, extra=extra)
        return outcome
    log.info("final state" if decision.final else "checked", extra=extra)
    if not decision.final and decision.next_check_at is not None:
        raise Retry(defer=max(0.0, decision.next_check_at - time.time()))
    return decision.status
