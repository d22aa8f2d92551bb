"""The job functions: a poll's check, and a final state's webhook delivery.

A check run carries out one plan of ``worker.core.planner``: it makes at most one status call (or,
for auto-publish, one quota read and one publish call) and writes the outcome with one fenced
script (``store.record``), which also schedules the job's next run or ends it. The wait between
checks lives in Redis (the job's score), not in a sleeping task.

Every write names the run (``ClaimedJob.token``): a run that lost its lease changes nothing. A
write refused by Redis (an outage, ``maxmemory``) is retried for as long as the run's timeout
allows, so the API's answer is not thrown away for a blip; after that the runner gives the job
back, and it runs again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, assert_never

from api_client.client import ThreadsClient
from api_client.errors import GraphAPIError, ThreadsError
from api_client.models import ContainerStatus, explain_api_error
from api_client.platforms import PLATFORMS, user_id_of
from api_client.policy import ErrorKind, classify
from config import Settings
from worker.core.decisions import Decision, Schedule
from worker.core.history import record_entries
from worker.core.planner import (
    AccountEffect,
    CallPublish,
    CallStatus,
    Policy,
    Record,
    Skip,
    TokenState,
    account_effect,
    after_publish,
    after_status,
    given_up,
    graph_code,
    plan_run,
    publish_account_effect,
    publish_not_claimed,
    publish_quota,
    publish_unacknowledged,
    token_hint,
)
from worker.core.publishing import judge_publish
from worker.core.result import Changes, PollResult, stamp
from worker.core.tracing import poll_traceparent
from worker.core.webhooks import body_for
from worker.jobs.context import PollerContext
from worker.jobs.quota import fetch_quota, quota_ttl
from worker.jobs.tokens import DEFAULT_ACCOUNT, fingerprint
from worker.ops import metrics, tracing
from worker.ops.tracing import NOOP_SPAN, Span
from worker.store.queue import ClaimedJob, persist
from worker.store.results import Recorded, record_fields

log = logging.getLogger("threads_poller.check")


def policy_of(settings: Settings) -> Policy:
    return Policy(
        schedule=Schedule(settings.poll_interval_seconds, settings.poll_max_seconds),
        max_delay=settings.throttle_max_delay_seconds,
        publish_grace=settings.publish_grace_seconds,
        publish_max_attempts=settings.publish_max_attempts,
        publish_min_age=settings.publish_min_age_seconds,
        reply_settle=settings.publish_reply_settle_seconds,
    )


def token_state(token: str | None, job: ClaimedJob) -> TokenState:
    if not token:
        return TokenState.MISSING
    rejected = job.account.token_rejected_fp
    # No token of the account was rejected (the usual case): no SHA-256 of the token per check
    # (a fingerprint is never empty).
    if rejected and rejected == fingerprint(token):
        return TokenState.REJECTED
    return TokenState.OK


class CheckJob:
    """``check_container(container_id, generation)``: one run of a poll's job."""

    def __init__(self, poller: PollerContext) -> None:
        self.p = poller

    async def __call__(self, job: ClaimedJob) -> None:
        current = PollResult.from_hash(job.state) if job.state else None
        if current is None:
            # The poll is gone or was replaced: nothing to plan.
            await self._end(job, "no poll")
            return
        tracer = tracing.active()
        if not tracer.enabled:
            await self._run(job, current, NOOP_SPAN)
            return
        # The poll's trace: the one stored at enqueue, else one derived from the poll (enqueued
        # where tracing was off), so that every check of it, by any worker, joins one trace.
        parent = current.traceparent or poll_traceparent(current.container_id, current.generation)
        with tracer.span(
            tracing.CHECK,
            parent=parent,
            attributes={
                "threads_poller.container_id": current.container_id,
                "threads_poller.account": current.account or DEFAULT_ACCOUNT,
                "threads_poller.generation": current.generation,
                "threads_poller.job_try": job.try_,
            },
        ) as span:
            await self._run(job, current, span)

    async def _run(self, job: ClaimedJob, current: PollResult, span: Span) -> None:
        p = self.p
        # "" when there is none: the planner calls the API only when the token is OK.
        token = await p.tokens.token_for(current.account) or ""
        plan = plan_run(
            current,
            throttled_until=job.account.throttled_until,
            token=token_state(token, job),
            now=job.now(),
            policy=p.policy,
        )
        match plan:
            case Skip(reason=reason):
                span.set("threads_poller.plan", "skip")
                await self._end(job, reason)
            case Record():
                span.set("threads_poller.plan", "record")
                await self.record(job, current, plan, span=span)
            case CallPublish():
                span.set("threads_poller.plan", "publish")
                await self._publish(job, current, token, span)
            case CallStatus():
                span.set("threads_poller.plan", "status")
                await self._check(job, current, token, span)
            case _:
                assert_never(plan)

    async def give_up(self, job: ClaimedJob, why: str) -> None:
        """Too many runs without a settled outcome: end the poll, saying why (TIMED_OUT, or
        PUBLISH_UNCONFIRMED when a publish may have gone out: ``planner.given_up``)."""
        from worker.core.errors import GaveUpError

        current = PollResult.from_hash(job.state) if job.state else None
        if current is None or current.final:
            await self._end(job, "no poll")
            return
        await self.record(
            job, current, given_up(current, GaveUpError(f"the check job was given up: {why}"))
        )

    async def _end(self, job: ClaimedJob, reason: str) -> None:
        # The guard keeps a live poll's job even if this run misread its poll.
        live = (str(job.args[0]), str(job.args[1])) if len(job.args) >= 2 else None
        ended = await persist(
            "ending a job", lambda: self.p.queue.settle(job, retry_in_ms=None, unless_live=live)
        )
        if not ended:
            # The poll is live after all: plan again from what Redis holds.
            await persist("releasing a job", lambda: self.p.queue.release(job, delay_ms=1000))
        log.debug("job ended: %s", reason, extra={"job_id": job.job_id, "ended": ended})

    async def _check(
        self, job: ClaimedJob, current: PollResult, token: str, span: Span = NOOP_SPAN
    ) -> None:
        p = self.p
        s = p.settings
        sent_ms = job.now_ms()
        t0 = time.perf_counter()
        try:
            outcome: ContainerStatus | ThreadsError = await p.clients[
                current.platform
            ].get_container_status(current.container_id, token=token)
        except ThreadsError as exc:
            outcome = ThreadsClient.scrub(exc, token)
        api_s = time.perf_counter() - t0
        metrics.observe_api_call(outcome, api_s)
        kind = classify(outcome) if isinstance(outcome, ThreadsError) else None
        if span is not NOOP_SPAN:
            span.update(api_attributes(outcome, api_s, kind))
            if isinstance(outcome, ThreadsError):
                span.error(kind.value if kind is not None else "error")

        effect = account_effect(
            outcome,
            throttle_level=job.account.throttle_level,
            usage_throttle_percent=s.usage_throttle_percent,
        )
        error = outcome if isinstance(outcome, ThreadsError) else None
        paused_until = await self._apply(
            job, current, effect, sent_ms=sent_ms, token=token, error=error
        )
        if paused_until is None:
            return
        explain = explain_api_error(outcome) if isinstance(outcome, ThreadsError) else None
        now = job.now()
        plan = after_status(
            current, outcome, now=now, paused_until=paused_until, policy=p.policy, explain=explain
        )
        await self.record(job, current, plan, checked_at=now, api_s=api_s, call="status", span=span)

    async def _apply(
        self,
        job: ClaimedJob,
        current: PollResult,
        effect: AccountEffect,
        *,
        sent_ms: int,
        token: str,
        error: ThreadsError | None,
    ) -> float | None:
        """Write an answer's account effect (``planner.account_effect``): the pause, the end of
        a back-off, a rejected token's mark. Returns the account's pause end (0.0 when not
        paused), or None when the run lost its lease (nothing more is recorded)."""
        account = current.account or DEFAULT_ACCOUNT
        paused_until = 0.0
        if effect.pause is not None:
            pause = effect.pause
            noted = await self._note_throttle(
                job,
                current,
                sent_ms=sent_ms,
                regain=pause.regain,
                code=pause.code,
                usage_percent=pause.usage_percent,
            )
            if noted is None:
                return None
            paused_until = noted
        elif effect.clear_throttle:
            await persist(
                "clearing a throttle",
                lambda: self.p.accounts.clear_throttle(job, account, sent_ms=sent_ms),
            )
        if effect.reject_token and error is not None and token:
            err = error
            if await persist(
                "noting a rejected token",
                lambda: self.p.accounts.reject_token(
                    job, account, fingerprint(token), str(err), graph_code(err)
                ),
            ):
                # Once per token, not once per container: one bad token can fail thousands.
                log.error(
                    "access token rejected: %s",
                    token_hint(account),
                    extra={
                        "account": account,
                        "error": str(err),
                        "container_id": current.container_id,
                    },
                )
        return paused_until

    async def _note_throttle(
        self,
        job: ClaimedJob,
        current: PollResult,
        *,
        sent_ms: int,
        regain: float,
        code: str,
        usage_percent: float | None = None,
    ) -> float | None:
        """One throttled answer: a step of the account's back-off (one per episode). Returns
        the account's pause end, or None when the run lost its lease (nothing is recorded)."""
        account = current.account or DEFAULT_ACCOUNT
        with tracing.active().span(
            tracing.THROTTLE,
            attributes={"threads_poller.account": account, "threads_poller.throttle.code": code},
        ) as span:
            return await self._throttle(
                job,
                current,
                account,
                sent_ms=sent_ms,
                regain=regain,
                code=code,
                usage_percent=usage_percent,
                span=span,
            )

    async def _throttle(
        self,
        job: ClaimedJob,
        current: PollResult,
        account: str,
        *,
        sent_ms: int,
        regain: float,
        code: str,
        usage_percent: float | None,
        span: Span,
    ) -> float | None:
        p, s = self.p, self.p.settings
        change = await persist(
            "noting a throttled answer",
            lambda: p.accounts.note_throttle(
                job,
                account,
                sent_ms=sent_ms,
                base=s.throttle_backoff_seconds,
                cap=s.throttle_backoff_max_seconds,
                at_least_ms=sent_ms + int(regain * 1000) if regain else 0,
                code=code,
            ),
        )
        if change.stale:
            self._stale(job, current, "lease lost")
            return None
        if span is not NOOP_SPAN:
            span.update(
                {
                    "threads_poller.throttle.pause_s": round(change.paused_until - job.now(), 3),
                    "threads_poller.throttle.level": change.level,
                    "threads_poller.throttle.new_episode": change.changed,
                    "threads_poller.throttle.usage_percent": usage_percent,
                }
            )
        if change.changed:
            log.warning(
                "account throttled; its checks pause for %.1fs",
                change.paused_until - job.now(),
                extra={
                    "account": account,
                    "code": code,
                    "level": change.level,
                    "usage_percent": usage_percent,
                },
            )
        return change.paused_until

    async def _publish(
        self, job: ClaimedJob, current: PollResult, token: str, span: Span = NOOP_SPAN
    ) -> None:
        """Publish a FINISHED container at most once (the rules: worker/core/publishing.py): the
        quota gate, the claim, the call, the record."""
        account = self._publish_account(current)
        quota = await self._quota_gate(job, current, account)
        if quota is None:
            return
        if not await self._claim(job, current):
            return
        sent_ms = job.now_ms()
        t0 = time.perf_counter()
        answer = await self._call_publish(current, user_id_of(account), token, t0)
        # From here on the answer is recorded whatever the run's timeout says (up to the end
        # of the lease): dropping it would lose the media id and leave the publish ambiguous.
        async with job.deadline.hold():
            await self._record_publish(
                job, current, answer, quota, sent_ms, time.perf_counter() - t0, span
            )

    def _publish_account(self, current: PollResult) -> str:
        """The account whose quota and publish edge this is: the poll's, else the platform's
        fallback token's user (THREADS_USER_ID / INSTAGRAM_USER_ID), else "me"."""
        account = current.account or ""
        if not user_id_of(account):
            platform = PLATFORMS[current.platform]
            account = platform.account_key(self.p.settings.platform_user_id(platform) or "me")
        return account

    async def _quota_gate(
        self, job: ClaimedJob, current: PollResult, account: str
    ) -> Changes | None:
        """Read the account's quota before the call: the quota's changes for the record, or None
        when a spent quota ended the run (its record written)."""
        p = self.p
        quota = Changes()
        try:
            snapshot = await fetch_quota(p.clients, p.tokens, account)
        except ThreadsError as exc:
            # Unknown quota does not block publishing: the publish call enforces it anyway.
            log.warning(
                "quota check before publish failed",
                extra={"container_id": current.container_id, "error": str(exc)},
            )
            snapshot = None
        if snapshot is not None:
            await p.accounts.save_quota(snapshot, quota_ttl(p.settings))
            # A reply spends the reply quota, anything else the post quota.
            quota, stop = publish_quota(current, snapshot.limit)
            if stop is not None:
                await self.record(job, current, stop)
                return None
        return quota

    async def _claim(self, job: ClaimedJob, current: PollResult) -> bool:
        """Claim the publish (fenced, held by enough replicas): True when the call may go out;
        else the refusal is recorded, or the job released to plan again."""
        p, s = self.p, self.p.settings
        needed = await persist("reading the replicas", p.replicas.needed)
        claim = await persist(
            "claiming the publish",
            lambda: p.store.claim_publish(
                job,
                current,
                max_attempts=s.publish_max_attempts,
                replicas=needed,
                wait_ms=int(s.publish_wait_timeout_seconds * 1000),
            ),
        )
        if claim.outcome != "ok":
            not_claimed = publish_not_claimed(claim.outcome, p.policy)
            if isinstance(not_claimed, Record):
                await self.record(job, current, not_claimed)
            else:
                log.info(not_claimed.reason, extra={"container_id": current.container_id})
                # Plan again from what Redis holds now (the run still owns the job, or not).
                await p.queue.release(job, delay_ms=0)
            return False
        if not claim.safe:
            log.warning(
                "publish claim not acknowledged by enough replicas; not published yet",
                extra={
                    "container_id": current.container_id,
                    "acked": claim.acked,
                    "needed": claim.needed,
                },
            )
            unsafe = publish_unacknowledged(
                current, acked=claim.acked, needed=claim.needed, now=job.now(), policy=p.policy
            )
            await self.record(job, current, unsafe)
            return False
        return True

    async def _call_publish(
        self, current: PollResult, user_id: str, token: str, t0: float
    ) -> str | ThreadsError:
        """The publish call, in a span of its own: the media id, or the error (token scrubbed).
        ``t0`` is when the call was timed from (the span's latency)."""
        with tracing.active().span(
            tracing.PUBLISH,
            kind="client",
            attributes={"threads_poller.container_id": current.container_id},
        ) as call:
            try:
                answer: str | ThreadsError = await self.p.clients[current.platform].publish(
                    user_id, current.container_id, token=token
                )
            except ThreadsError as exc:
                answer = ThreadsClient.scrub(exc, token)
            if call is not NOOP_SPAN:
                error = answer if isinstance(answer, ThreadsError) else None
                call.update(
                    api_attributes(
                        error, time.perf_counter() - t0, classify(error) if error else None
                    )
                )
                call.set("threads_poller.publish.verdict", str(judge_publish(answer)))
                if error is not None:
                    call.error("publish_failed")
        return answer

    async def _record_publish(
        self,
        job: ClaimedJob,
        current: PollResult,
        answer: str | ThreadsError,
        quota: Changes,
        sent_ms: int,
        api_s: float,
        span: Span = NOOP_SPAN,
    ) -> None:
        p = self.p
        verdict = judge_publish(answer)
        metrics.observe_publish(verdict, current.platform)
        error = answer if isinstance(answer, ThreadsError) else None
        log.info(
            "publish answered: %s",
            verdict,
            extra={
                "container_id": current.container_id,
                "api_ms": round(api_s * 1000, 1),
                "error": str(error) if error else None,
            },
        )
        paused_until = await self._apply(
            job,
            current,
            publish_account_effect(verdict, error),
            sent_ms=sent_ms,
            token="",
            error=error,
        )
        if paused_until is None:
            return
        plan = after_publish(
            current,
            verdict,
            media_id=answer if isinstance(answer, str) else None,
            error=error,
            now=job.now(),
            policy=p.policy,
            paused_until=paused_until,
        )
        await self.record(
            job,
            current,
            dataclasses.replace(plan, changes=quota.merged(plan.changes)),
            api_s=api_s,
            call="publish",
            verdict=verdict,
            media_id=answer if isinstance(answer, str) else None,
            span=span,
        )

    def _stale(self, job: ClaimedJob, current: PollResult, reason: str) -> None:
        # A newer run owns the poll (this one stalled past its lease): its answer is dropped.
        log.info(
            "run no longer owns its poll; outcome dropped: %s",
            reason,
            extra={"container_id": current.container_id, "job_try": job.try_, "status": "stale"},
        )

    async def record(
        self,
        job: ClaimedJob,
        current: PollResult,
        plan: Record,
        *,
        checked_at: float | None = None,
        api_s: float | None = None,
        call: str | None = None,
        verdict: str | None = None,
        media_id: str | None = None,
        span: Span = NOOP_SPAN,
    ) -> Recorded:
        """Write the plan; ``call`` (``status`` / ``publish``), ``api_s``, ``verdict`` and
        ``media_id`` say what this run asked the API and heard, for the history."""
        p = self.p
        decision = plan.decision
        story = record_entries(
            decision,
            call=call,
            latency_ms=round(api_s * 1000) if api_s is not None else None,
            verdict=verdict,
            media_id=media_id,
            checks=decision.checks if decision.checks is not None else current.checks,
        )
        webhook = None
        if decision.final and (current.webhook_url or p.settings.webhook_url):
            now = job.now()
            body = body_for(
                final_view(current, decision, plan.changes, now, checked_at=checked_at),
                self.p.store.keys.webhook_job_id(current.container_id, current.generation),
            )
            webhook = p.store.webhook_for(current, body, int(now * 1000))
        written = await persist(
            "recording a check",
            lambda: p.store.record(
                job,
                current,
                decision,
                checked_at=checked_at,
                changes=plan.changes,
                webhook=webhook,
                history=story,
            ),
        )
        self._observe(job, current, plan, written, api_s)
        if span is not NOOP_SPAN:
            span.update(
                {
                    "threads_poller.status": decision.status,
                    "threads_poller.final": decision.final,
                    "threads_poller.recorded": written.outcome,
                }
            )
        return written

    def _observe(
        self,
        job: ClaimedJob,
        current: PollResult,
        plan: Record,
        written: Recorded,
        api_s: float | None,
    ) -> None:
        decision = plan.decision
        due = current.next_check_at or current.enqueued_at
        lag_s = job.claimed_ms / 1000 - due if due is not None else None
        metrics.observe_check(
            decision,
            checked=api_s is not None,
            written=written.outcome == "ok",
            lag_s=lag_s,
            platform=current.platform,
        )
        if written.outcome != "ok":
            self._stale(job, current, written.reason)
            return
        # A line per check is a tenth of a check's CPU at full rate: INFO logs final states,
        # DEBUG adds every check.
        level = logging.INFO if decision.final else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "container_id": current.container_id,
            "job_try": job.try_,
            "status": decision.status,
            "final": decision.final,
            "checks": decision.checks if decision.checks is not None else current.checks,
            "run_ms": round((time.monotonic() - job.claimed_mono) * 1000, 1),
        }
        if lag_s is not None:
            extra["lag_s"] = round(lag_s, 3)
        if api_s is not None:
            extra["api_ms"] = round(api_s * 1000, 1)
        if written.next_run_at is not None:
            extra["next_in_s"] = round(written.next_run_at - job.now(), 3)
        if not decision.spent:
            extra["throttled"] = True
        if decision.error is not None:
            extra["error"] = str(decision.error)
            extra["error_kind"] = decision.error_kind
        log.log(level, "final state" if decision.final else "checked", extra=extra)


def api_attributes(
    outcome: ContainerStatus | ThreadsError | None, api_s: float, kind: ErrorKind | None
) -> dict[str, str | int | float | None]:
    """A call's answer as span attributes: ids, statuses and codes only (an error's message is
    not among them: Meta echoes what it was sent)."""
    attributes: dict[str, str | int | float | None] = {
        "threads_poller.api.latency_ms": round(api_s * 1000, 1)
    }
    if isinstance(outcome, ContainerStatus):
        attributes["threads_poller.api.status"] = outcome.status
    elif outcome is not None:
        attributes["threads_poller.error.kind"] = kind.value if kind is not None else None
        attributes["threads_poller.error.type"] = type(outcome).__name__
        attributes["http.response.status_code"] = outcome.http_status
        if isinstance(outcome, GraphAPIError):
            attributes["threads_poller.graph.code"] = outcome.code
            attributes["threads_poller.graph.subcode"] = outcome.subcode
            attributes["threads_poller.graph.fbtrace_id"] = outcome.fbtrace_id
    return attributes


def final_view(
    current: PollResult,
    decision: Decision,
    changes: Changes,
    now: float,
    *,
    checked_at: float | None = None,
) -> PollResult:
    """The poll as its final record leaves it (for the webhook body, built before the write).

    ``checks`` and ``last_checked_at`` are read from the very fields the record writes
    (``record_fields``): the body said the previous check's time (or null on a first check that
    was final) and counted checks a record that does not touch them never wrote."""
    from api_client.models import explain_error_message

    written = record_fields(current, decision, checked_at=checked_at, changes=changes)
    checks = int(written["checks"]) if written.get("checks") else current.checks
    last_checked_at = (
        float(written["last_checked_at"])
        if written.get("last_checked_at")
        else current.last_checked_at
    )
    last_error = current.last_error
    if decision.error is not None:
        last_error = f"{decision.error}; {decision.hint}" if decision.hint else str(decision.error)
    return dataclasses.replace(
        current,
        status=decision.status,
        final=True,
        error_message=decision.error_message,
        error_explanation=explain_error_message(decision.error_message, current.platform) or None,
        last_error=last_error,
        checks=checks,
        last_checked_at=last_checked_at,
        media_id=changes.media_id or current.media_id,
        finalized_at=float(stamp(now)),
        published_at=(
            float(stamp(changes.published_at))
            if changes.published_at is not None
            else current.published_at
        ),
    )
