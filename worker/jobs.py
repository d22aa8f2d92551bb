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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from arq import Retry

from api_client.client import ThreadsClient
from api_client.errors import GraphAPIError, MissingTokenError, ThreadsError
from api_client.models import ContainerStatus
from api_client.policy import ErrorKind, classify
from config import Settings
from worker import metrics
from worker.accounts import AccountState, AccountStore
from worker.arq_job_runner import SETTLES_ITSELF, Settled
from worker.decisions import (
    Decision,
    Schedule,
    decide,
    decide_throttled,
    effective_deadline,
    next_check_at,
    timed_out,
    wait_before_check,
    window_closed,
)
from worker.errors import PublishError, RejectedTokenError
from worker.publishing import PublishStatus, PublishVerdict, judge_publish
from worker.quota import fetch_quota, quota_ttl
from worker.states import State
from worker.store import PollResult, ResultStore, SettleJob
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
    client_session: aiohttp.ClientSession


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
    start = await poller.accounts.begin_check(
        container_id,
        generation,
        per_second=settings.account_max_requests_per_second,
        max_wait=MAX_PACE_SLEEP_SECONDS,
    )
    current, state = start.result, start.account
    if current is None or current.generation != generation:
        # The result expired or a newer poll (forced re-enqueue) replaced this one.
        log.info(
            "stale check skipped",
            extra={"container_id": container_id, "job_try": ctx.get("job_try"), "status": "stale"},
        )
        return "stale"
    if current.final:
        return current.status

    if (
        current.publish
        and current.status == State.FINISHED
        and current.publish_status
        in (
            PublishStatus.PENDING,
            PublishStatus.IN_FLIGHT,
        )
    ):
        return await publish_step(poller, current, ctx)

    early = wait_before_check(current.next_check_at, now=started)
    if early > 0:
        log.debug("run before its check is due; deferred", extra={
            "container_id": container_id, "job_try": ctx.get("job_try"),
            "wait_s": round(early, 3)})  # fmt: skip
        raise Retry(defer=early)

    deadline = effective_deadline(
        current.deadline_at or started, current.throttle_delay, settings.throttle_max_delay_seconds
    )
    if window_closed(poller.schedule, checks_made=current.checks, deadline=deadline, now=started):
        decision = timed_out(current.last_api_status or current.status, current.error_message)
        return await _finish(poller, current, decision, checks=current.checks, ctx=ctx)

    account = current.account or DEFAULT_ACCOUNT
    token = await poller.tokens.token_for(current.account)
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

    wait = start.pace_wait
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
    extra: dict[str, str] = {}
    finished = isinstance(outcome, ContainerStatus) and outcome.status == State.FINISHED
    if current.publish and finished and not current.publish_status:
        # Auto-publish: FINISHED starts the publish, after a short grace (see publishing.py).
        decision = Decision(
            status=State.FINISHED,
            final=False,
            next_check_at=now + settings.publish_grace_seconds,
            last_api_status=State.FINISHED,
        )
        extra = {"publish_status": str(PublishStatus.PENDING), "finished_at": repr(now)}
    else:
        decision = decide(
            poller.schedule,
            outcome,
            checks_made=checks,
            deadline=deadline,
            now=now,
            previous_status=current.status,
            previous_error_message=current.error_message,
            # An unconfirmed publish waits for PUBLISHED; FINISHED alone does not settle it.
            not_final=AWAITING_PUBLISHED if current.publish_status == "unconfirmed" else NONE,
        )
    if kind is ErrorKind.TOKEN:
        decision = dataclasses.replace(decision, hint=token_hint(account))
    return await _finish(
        poller, current, decision, checks=checks, checked_at=now, ctx=ctx, api_ms=api_ms,
        extra=extra,
    )  # fmt: skip


AWAITING_PUBLISHED: frozenset[str] = frozenset({State.FINISHED})
NONE: frozenset[str] = frozenset()


async def publish_step(poller: PollerContext, current: PollResult, ctx: dict[str, Any]) -> str:
    """Publish a FINISHED container at most once (see worker/publishing.py for the rules)."""
    settings = poller.settings
    now = time.time()
    deadline = effective_deadline(
        current.deadline_at or now, current.throttle_delay, settings.throttle_max_delay_seconds
    )

    def back_to_polling(error: ThreadsError | None) -> Decision:
        due = next_check_at(poller.schedule, checks_made=current.checks, deadline=deadline, now=now)
        if due is None:
            return timed_out(State.FINISHED, None, error=error,
                             error_kind=classify(error) if error else None)  # fmt: skip
        return Decision(State.FINISHED, False, due, last_api_status=State.FINISHED, error=error,
                        error_kind=classify(error) if error else None)  # fmt: skip

    def final(status: State, error: ThreadsError | None = None) -> Decision:
        return Decision(status, True, None, last_api_status=State.FINISHED, error=error,
                        error_kind=classify(error) if error else None)  # fmt: skip

    if current.publish_status == PublishStatus.IN_FLIGHT:
        # A run claimed the publish and died: the call may have gone out. Never repeat it.
        decision = back_to_polling(PublishError("publish outcome unknown (worker stopped)"))
        return await _finish(poller, current, decision, checks=current.checks, ctx=ctx,
                             extra={"publish_status": PublishStatus.UNCONFIRMED})  # fmt: skip

    account = current.account or DEFAULT_ACCOUNT
    user_id = current.account or settings.threads_user_id or "me"
    token = await poller.tokens.token_for(current.account)
    if not token:
        missing = MissingTokenError(f"no access token configured for account {account}")
        decision = dataclasses.replace(
            final(State.PUBLISH_FAILED, missing), hint=token_hint(account)
        )
        return await _finish(poller, current, decision, checks=current.checks, ctx=ctx,
                             extra={"publish_status": PublishStatus.FAILED})  # fmt: skip

    extra: dict[str, str] = {}
    try:
        snapshot = await fetch_quota(poller.client, poller.tokens, user_id)
    except ThreadsError as exc:
        # Unknown quota does not block publishing: the publish call enforces it anyway.
        log.warning("quota check before publish failed", extra={
            "container_id": current.container_id, "error": str(exc)})  # fmt: skip
        snapshot = None
    if snapshot is not None:
        await poller.accounts.save_quota(snapshot, quota_ttl(settings))
        if snapshot.limit.quota_usage is not None:
            extra["quota_usage"] = str(snapshot.limit.quota_usage)
        if snapshot.limit.config and snapshot.limit.config.quota_total is not None:
            extra["quota_total"] = str(snapshot.limit.config.quota_total)
        if snapshot.posts_remaining == 0:
            err = PublishError(
                f"posting quota used up: {extra.get('quota_usage')} of "
                f"{extra.get('quota_total')} posts in the last 24 h; not published"
            )
            extra["publish_status"] = PublishStatus.QUOTA_EXHAUSTED
            return await _finish(poller, current, final(State.QUOTA_EXHAUSTED, err),
                                 checks=current.checks, ctx=ctx, extra=extra)  # fmt: skip

    claim = await poller.store.claim_publish(current, max_attempts=settings.publish_max_attempts)
    if claim == "exhausted":
        err = PublishError(f"not published after {settings.publish_max_attempts} attempts")
        extra["publish_status"] = PublishStatus.FAILED
        return await _finish(poller, current, final(State.PUBLISH_FAILED, err),
                             checks=current.checks, ctx=ctx, extra=extra)  # fmt: skip
    if claim != "ok":
        log.info("publish not claimed: %s", claim, extra={"container_id": current.container_id})
        return claim

    t0 = time.perf_counter()
    try:
        outcome: str | ThreadsError = await poller.client.publish(
            user_id, current.container_id, token=token
        )
    except ThreadsError as exc:
        outcome = ThreadsClient.scrub(exc, token)
    api_ms = (time.perf_counter() - t0) * 1000
    verdict = judge_publish(outcome)
    now = time.time()
    error = outcome if isinstance(outcome, ThreadsError) else None
    log.info("publish answered: %s", verdict, extra={
        "container_id": current.container_id, "api_ms": round(api_ms, 1),
        "error": str(error) if error else None})  # fmt: skip

    if verdict is PublishVerdict.PUBLISHED:
        assert isinstance(outcome, str)
        extra.update(publish_status=PublishStatus.PUBLISHED, media_id=outcome,
                     published_at=repr(now))  # fmt: skip
        decision = final(State.PUBLISHED)
    elif verdict is PublishVerdict.UNCONFIRMED:
        extra["publish_status"] = PublishStatus.UNCONFIRMED
        decision = back_to_polling(error)
    elif (
        verdict is PublishVerdict.NOT_READY
        and current.publish_attempts + 1 >= settings.publish_max_attempts
    ):
        extra["publish_status"] = PublishStatus.FAILED
        decision = final(State.PUBLISH_FAILED, error)
    elif verdict in (PublishVerdict.NOT_READY, PublishVerdict.RETRY_LATER):
        # Certainly not published: release the claim for a later attempt.
        extra["publish_status"] = PublishStatus.PENDING
        wait = settings.publish_grace_seconds if verdict is PublishVerdict.NOT_READY else (
            poller.schedule.interval)  # fmt: skip
        decision = Decision(State.FINISHED, False, now + max(wait, 0.05),
                            last_api_status=State.FINISHED, error=error,
                            error_kind=classify(error) if error else None)  # fmt: skip
    elif verdict is PublishVerdict.QUOTA_EXHAUSTED:
        extra["publish_status"] = PublishStatus.QUOTA_EXHAUSTED
        decision = final(State.QUOTA_EXHAUSTED, error)
    else:
        extra["publish_status"] = PublishStatus.FAILED
        decision = final(State.PUBLISH_FAILED, error)
    return await _finish(poller, current, decision, checks=current.checks, ctx=ctx,
                         api_ms=api_ms, extra=extra)  # fmt: skip


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
    extra: Mapping[str, str] | None = None,
) -> str:
    """Record the decision; schedule the next check if there is one."""
    now = time.time()
    # Under our runner the record script also ends or re-schedules the arq job (one round trip
    # less, and atomic with the outcome); under stock arq, arq does it after the return.
    settle: SettleJob | None = None
    if ctx.get(SETTLES_ITSELF) and "job_id" in ctx:
        again = decision.next_check_at if not decision.final else None
        settle = SettleJob(ctx["job_id"], None if again is None else int(again * 1000))
    outcome, _ = await poller.store.record(
        current,
        decision,
        checks=checks,
        checked_at=checked_at,
        now=now,
        extra=extra,
        settle_job=settle,
    )
    timings = metrics.check_timings(ctx, current, now)
    metrics.observe_check(
        decision, checked=api_ms is not None, written=outcome == "ok", lag_s=timings.get("lag_s")
    )
    # A line per check is a tenth of a check's CPU at full rate: INFO logs final states and
    # anomalies, DEBUG adds every check.
    level = logging.INFO if decision.final or outcome != "ok" else logging.DEBUG
    if log.isEnabledFor(level):
        log_extra: dict[str, Any] = {
            "container_id": current.container_id,
            "job_try": ctx.get("job_try"),
            "status": decision.status,
            "final": decision.final,
            "checks": checks,
        }
        if api_ms is not None:
            log_extra["api_ms"] = round(api_ms, 1)
        if decision.next_check_at is not None:
            log_extra["next_in_s"] = round(decision.next_check_at - now, 3)
        if not decision.spent:
            log_extra["throttled"] = True
        if decision.error is not None:
            log_extra["error"] = str(decision.error)
            log_extra["error_kind"] = decision.error_kind
        log_extra.update(timings)
        if outcome != "ok":
            log.log(level, "check outcome not written: %s", outcome, extra=log_extra)
        else:
            log.log(level, "final state" if decision.final else "checked", extra=log_extra)
    if outcome != "ok":
        return outcome
    if settle is not None:
        return Settled(decision.status, rescheduled=settle.next_run_ms is not None)
    if not decision.final and decision.next_check_at is not None:
        raise Retry(defer=max(0.0, decision.next_check_at - time.time()))
    return decision.status
