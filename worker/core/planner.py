"""The lifecycle planner: what one run of a poll's check job does. Pure: no Redis, no network,
no clock (the caller passes ``now``, read from Redis' clock).

A poll is in one phase at a time (``phase_of``):

    WAITING_CHILDREN ──last child FINISHED──> POLLING   (a carousel's parent only)
       └──a child failed / children never ready──> FINAL

    POLLING ──FINISHED + publish──> PUBLISH_DUE ──claim──> PUBLISH_IN_FLIGHT ──answer──> FINAL
       │                               ^   (certainly not published: back to due)   │
       │                               └────────────────────────────────────────────┤
       │                             ambiguous answer / run died in flight           v
       └──final status, window over──> FINAL <──PUBLISHED / window over── AWAITING_PUBLISHED

A carousel's parent waits on its children through its hash: each child's final record updates
the parent's ``children_pending`` (or ``failed_child``) in the same script and makes the parent's
job due (``store/lua/record.lua``), so nothing polls Redis and the parent costs no API call
before every child is FINISHED.

``plan_run`` turns (the poll, its account's state, the token's state, now) into one plan: skip
the run, record something without calling the API (a deferral, a final state), or call the API
(status or publish). ``after_status`` and ``after_publish`` turn the API's answer into the
record. The check job (``worker.jobs.check``) only carries plans out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Concatenate, ParamSpec, TypeVar, cast

from api_client.errors import GraphAPIError, MissingTokenError, ThreadsError
from api_client.models import ContainerStatus, PublishingLimit
from api_client.platforms import platform_of_account, user_id_of
from api_client.policy import ErrorKind, classify
from worker.core.decisions import (
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
from worker.core.errors import (
    CarouselChildError,
    PublishError,
    RejectedTokenError,
    WindowEndedError,
    failure_of,
)
from worker.core.publishing import PublishStatus, PublishVerdict
from worker.core.result import CLEAR, Changes, PollResult
from worker.core.states import State

_Poll = TypeVar("_Poll", PollResult, PollResult | None)
_P = ParamSpec("_P")
_Out = TypeVar("_Out")

# 100/33 has been seen for containers that do exist, once: fail only when it repeats on the
# next scheduled check.
NOT_FOUND_STRIKES = 2


class Phase(StrEnum):
    WAITING_CHILDREN = "waiting_children"
    POLLING = "polling"
    PUBLISH_DUE = "publish_due"
    PUBLISH_IN_FLIGHT = "publish_in_flight"
    AWAITING_PUBLISHED = "awaiting_published"
    FINAL = "final"


class TokenState(StrEnum):
    OK = "ok"
    MISSING = "missing"
    REJECTED = "rejected"  # the API already rejected this very token (by fingerprint)


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings the planner reads, as plain values."""

    schedule: Schedule
    # How far throttling and pacing may push a window out, in all.
    max_delay: float
    publish_grace: float
    publish_max_attempts: int
    # No publish sooner than this after enqueue (Meta: "on average 30 seconds").
    publish_min_age: float = 0.0
    # A reply's wait after FINISHED instead of the grace (video replies published a few
    # seconds after FINISHED lost their reply_to_id).
    reply_settle: float = 0.0


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do: the poll is over or was replaced; the job ends."""

    reason: str


@dataclass(frozen=True, slots=True)
class Record:
    """Write this without calling the API."""

    decision: Decision
    changes: Changes = field(default_factory=Changes)


@dataclass(frozen=True, slots=True)
class CallStatus:
    """Ask the API for the container's status."""


@dataclass(frozen=True, slots=True)
class CallPublish:
    """Check the quota, claim the publish, publish."""


Plan = Skip | Record | CallStatus | CallPublish


@dataclass(frozen=True, slots=True)
class Pause:
    """One step of the account's back-off (one per throttling episode: accounts.lua)."""

    # The Graph code ("4", "80002"...) or "usage" (usage headers near the limit).
    code: str
    # Meta's estimate of when access comes back, seconds (0: none given).
    regain: float = 0.0
    usage_percent: float | None = None


@dataclass(frozen=True, slots=True)
class AccountEffect:
    """What one API answer does to its account's shared state, which the job writes before
    it records the poll (a pause's end is the account's, learnt from Redis)."""

    pause: Pause | None = None
    # The answer was not throttled while the account was: its back-off ends.
    clear_throttle: bool = False
    # The API rejected the token (190/102): the account is marked, its polls fail at once.
    reject_token: bool = False


NO_EFFECT = AccountEffect()


def account_effect(
    outcome: ContainerStatus | ThreadsError,
    *,
    throttle_level: int,
    usage_throttle_percent: float,
) -> AccountEffect:
    """The account effect of a status answer: a pause for a throttling answer or usage headers
    near the limit (``USAGE_THROTTLE_PERCENT``, or an estimate to regain access), the end of a
    back-off otherwise, and a rejected token's mark."""
    kind = classify(outcome) if isinstance(outcome, ThreadsError) else None
    usage = outcome.usage
    regain = usage.regain_seconds if usage else 0.0
    near_limit = usage is not None and (usage.max_percent >= usage_throttle_percent or regain > 0)
    pause = None
    if kind is ErrorKind.THROTTLED or near_limit:
        code = str(outcome.code) if isinstance(outcome, GraphAPIError) else "usage"
        pause = Pause(code, regain, usage.max_percent if usage else None)
    return AccountEffect(
        pause=pause,
        clear_throttle=pause is None and throttle_level > 0,
        reject_token=kind is ErrorKind.TOKEN,
    )


def publish_account_effect(verdict: PublishVerdict, error: ThreadsError | None) -> AccountEffect:
    """A publish answer's account effect: a rate limit pauses the account like a throttled
    check (no Meta estimate: publish answers carry none we use)."""
    if verdict is not PublishVerdict.THROTTLED:
        return NO_EFFECT
    code = str(error.code) if isinstance(error, GraphAPIError) else "throttled"
    return AccountEffect(pause=Pause(code))


def phase_of(r: PollResult) -> Phase:
    if r.final:
        return Phase.FINAL
    if r.is_carousel and r.children_ready_at is None:
        return Phase.WAITING_CHILDREN
    if r.publish and r.status == State.FINISHED:
        if r.publish_status == PublishStatus.PENDING and not r.publish_verify:
            return Phase.PUBLISH_DUE
        if r.publish_status == PublishStatus.IN_FLIGHT:
            return Phase.PUBLISH_IN_FLIGHT
    if r.publish_status == PublishStatus.UNCONFIRMED:
        return Phase.AWAITING_PUBLISHED
    return Phase.POLLING


def schedule_of(r: PollResult, policy: Policy) -> Schedule:
    """The poll's own schedule: the workers' interval over the poll's own window (a poll
    enqueued with a longer or shorter ``window_seconds`` than POLL_MAX_SECONDS gets as many
    checks as its window holds, not the workers' number)."""
    window = r.window
    if window is None:
        return policy.schedule
    return Schedule(policy.schedule.interval, window)


def deadline_of(r: PollResult, policy: Policy) -> float:
    """The window's end: fixed at enqueue, pushed out by throttling and pacing up to a cap."""
    return effective_deadline(
        r.deadline_at or r.enqueued_at or 0.0, r.window_delay, policy.max_delay
    )


def window_ended(r: PollResult, policy: Policy | None) -> WindowEndedError:
    """Why a poll stopped without a final status, in words (it always says why)."""
    checks = f"{r.checks} check{'s' if r.checks != 1 else ''}"
    last = f", last status {r.last_api_status}" if r.last_api_status else ""
    pushed = ""
    if r.window_delay > 0:
        pushed = f"; throttling and pacing pushed it out by {r.window_delay:.1f}s"
        if policy is not None and r.window_delay >= policy.max_delay:
            pushed += " (the most THROTTLE_MAX_DELAY_SECONDS allows)"
    return WindowEndedError(f"no final status within the window ({checks}{last}){pushed}")


def _timed_out(r: PollResult, policy: Policy, error: BaseException | None = None) -> Decision:
    why = error if error is not None else window_ended(r, policy)
    return timed_out(r.last_api_status or r.status, r.error_message, error=why)


def _publish_final(status: State, error: BaseException | None = None) -> Decision:
    return Decision(
        status,
        True,
        None,
        last_api_status=State.FINISHED,
        error=failure_of(error),
    )


def back_to_polling(
    r: PollResult, policy: Policy, now: float, error: BaseException | None
) -> Decision:
    """After an ambiguous publish: check the status again until PUBLISHED or the window ends."""
    due = next_check_at(
        schedule_of(r, policy), checks_made=r.checks, deadline=deadline_of(r, policy), now=now
    )
    if due is None:
        return timed_out(
            State.FINISHED,
            None,
            error=failure_of(error or window_ended(r, policy)),
        )
    return Decision(
        State.FINISHED,
        False,
        due,
        last_api_status=State.FINISHED,
        error=failure_of(error),
    )


def _defer(r: PollResult, until: float) -> Decision:
    """Run again at ``until``; nothing else changes."""
    return Decision(
        r.status,
        False,
        until,
        error_message=r.error_message,
        last_api_status=r.last_api_status,
        spent=True,
        touch=False,
    )


def publish_due_at(r: PollResult, policy: Policy, now: float) -> float:
    """When a container FINISHED at ``now`` may be published: after the grace (a reply's longer
    settle time) and no sooner than the minimum age after enqueue."""
    settle = max(policy.publish_grace, policy.reply_settle) if r.reply_to else policy.publish_grace
    return max(now + settle, (r.enqueued_at or now) + policy.publish_min_age)


# The longest single wait after a "not ready" (config/settings.py counts the same cap).
MAX_NOT_READY_BACKOFF_SECONDS = 300.0


def not_ready_backoff(policy: Policy, attempts: int) -> float:
    """The wait after the ``attempts``-th publish answered 24/4279009: the grace, doubling."""
    wait = max(policy.publish_grace, 0.05) * 2.0 ** max(attempts - 1, 0)
    return min(wait, max(MAX_NOT_READY_BACKOFF_SECONDS, policy.publish_grace))


def children_deadline(r: PollResult, policy: Policy) -> float:
    """The latest a carousel's children can all have reported: their window (the parent's until
    they are ready), as far as throttling may push it, plus an interval for their last record."""
    s = schedule_of(r, policy)
    return (r.deadline_at or r.enqueued_at or 0.0) + policy.max_delay + s.slack + s.interval


def child_failed(r: PollResult) -> Decision:
    child = r.failed_child or "?"
    status = r.failed_child_status or "not FINISHED"
    reason = f" ({r.failed_child_error})" if r.failed_child_error else ""
    err = CarouselChildError(
        f"carousel child {child} ended {status}{reason}; the carousel cannot be published "
        "(its parent was not polled)"
    )
    return Decision(
        State.CHILD_FAILED,
        True,
        None,
        error_message=r.failed_child_error,
        error=failure_of(err),
        hint="recreate that child and the carousel container",
    )


def _waiting(r: PollResult, policy: Policy, now: float) -> Record:
    if r.failed_child:
        return Record(child_failed(r))
    until = children_deadline(r, policy)
    if now < until:
        # Only a safety net: the last child's record makes this job due long before.
        return Record(_defer(r, until))
    pending = r.children_pending
    err = WindowEndedError(
        f"carousel children not all FINISHED within the window ({pending} of "
        f"{len(r.children)} still pending); the parent was not polled"
    )
    return Record(timed_out(State.QUEUED, None, error=err))


UNCONFIRMED_HINT = (
    "the publish answer was ambiguous and the container never showed PUBLISHED: look at the "
    "account's posts before reposting (publishing again may post it twice)"
)
MEDIA_ID_UNKNOWN = (
    "published (seen as PUBLISHED after an ambiguous publish answer); media id unknown: the API "
    "documents no way to learn it from the container"
)


def _settle_unconfirmed(r: PollResult, rec: Record) -> Record:
    """After an ambiguous publish, an ending without PUBLISHED is PUBLISH_UNCONFIRMED (not
    TIMED_OUT or FAILED: the post may be live), and PUBLISHED says the media id is unknown."""
    d = rec.decision
    unconfirmed = PublishStatus.UNCONFIRMED
    if not d.final or unconfirmed not in (r.publish_status, rec.changes.publish_status):
        return rec
    if d.status == State.PUBLISHED:
        return replace(rec, changes=rec.changes.merged(Changes(publish_note=MEDIA_ID_UNKNOWN)))
    if d.status not in (State.TIMED_OUT, State.FAILED):
        return rec
    hint = f"{d.hint}; {UNCONFIRMED_HINT}" if d.hint else UNCONFIRMED_HINT
    error = d.error or failure_of(window_ended(r, None))
    return replace(
        rec, decision=replace(d, status=State.PUBLISH_UNCONFIRMED, hint=hint, error=error)
    )


def settles_unconfirmed(
    fn: Callable[Concatenate[_Poll, _P], _Out],
) -> Callable[Concatenate[_Poll, _P], _Out]:
    """Every record a planning step returns goes through ``_settle_unconfirmed`` (one rule for
    all of them, rather than a public wrapper per step repeating its signature)."""

    @functools.wraps(fn)
    def settled(r: _Poll, /, *args: _P.args, **kwargs: _P.kwargs) -> _Out:
        out = fn(r, *args, **kwargs)
        if isinstance(out, Record) and r is not None:
            return cast(_Out, _settle_unconfirmed(r, out))
        return out

    return settled


@settles_unconfirmed
def plan_run(
    r: PollResult | None,
    *,
    throttled_until: float,
    token: TokenState,
    now: float,
    policy: Policy,
) -> Plan:
    if r is None:
        return Skip("the poll is gone or was replaced")
    phase = phase_of(r)
    if phase is Phase.FINAL:
        return Skip("already final")
    if phase is Phase.WAITING_CHILDREN:
        return _waiting(r, policy, now)
    if phase is Phase.PUBLISH_IN_FLIGHT:
        # A run claimed the publish and died: the call may have gone out. Never repeat it.
        decision = back_to_polling(
            r, policy, now, PublishError("publish outcome unknown (the run publishing it stopped)")
        )
        return Record(decision, Changes(publish_status=PublishStatus.UNCONFIRMED))
    if wait_before_check(r.next_check_at, now=now) > 0 and r.next_check_at is not None:
        return Record(_defer(r, r.next_check_at))
    # A due publish (and the status read that must come before it) is not cut off by the
    # window: the container was FINISHED in time.
    publishing = phase is Phase.PUBLISH_DUE or (
        r.publish and r.publish_status == PublishStatus.PENDING
    )
    if not publishing and window_closed(
        schedule_of(r, policy), checks_made=r.checks, deadline=deadline_of(r, policy), now=now
    ):
        return Record(_timed_out(r, policy))
    if token is not TokenState.OK:
        # A due publish that fails for its token is over, like every other PUBLISH_FAILED.
        changes = (
            Changes(publish_status=PublishStatus.FAILED)
            if phase is Phase.PUBLISH_DUE
            else Changes()
        )
        return Record(token_failure(r, token, phase), changes)
    if throttled_until > now:
        if phase is Phase.PUBLISH_DUE:
            # Publishing obeys the account's pause too (the quota and publish calls wait).
            return Record(_defer(r, throttled_until))
        return Record(
            decide_throttled(
                schedule_of(r, policy),
                now=now,
                paused_until=throttled_until,
                deadline=r.deadline_at or now,
                window_delay=r.window_delay,
                max_delay=policy.max_delay,
                previous_status=r.status,
                previous_error_message=r.error_message,
                error=None,
            )
        )
    if phase is Phase.PUBLISH_DUE:
        return CallPublish()
    return CallStatus()


def token_failure(r: PollResult, token: TokenState, phase: Phase) -> Decision:
    account = r.account or "default"
    error: MissingTokenError | RejectedTokenError = (
        MissingTokenError(f"no access token configured for account {account}")
        if token is TokenState.MISSING
        else RejectedTokenError("not checked: the account's token was rejected by the API")
    )
    if phase is Phase.PUBLISH_DUE:
        return replace(_publish_final(State.PUBLISH_FAILED, error), hint=token_hint(account))
    return Decision(
        State.FAILED,
        True,
        None,
        error=failure_of(error, ErrorKind.TOKEN),
        last_api_status=r.last_api_status,
        hint=token_hint(account),
    )


def token_hint(account: str) -> str:
    platform = platform_of_account(account)
    user_id = user_id_of(account)
    where = (
        platform.token_env
        if user_id in ("", "default")
        else f"THREADS_TOKENS_FILE (or {platform.token_env}_{user_id})"
    )
    return (
        f"the access token of account {account} was rejected: put a valid token in {where}; "
        "checks of this account resume with the new token, and failed containers can be "
        "enqueued again with --force"
    )


AWAITING_PUBLISHED: frozenset[str] = frozenset({State.FINISHED})


@settles_unconfirmed
def after_status(
    r: PollResult,
    outcome: ContainerStatus | ThreadsError,
    *,
    now: float,
    paused_until: float,
    policy: Policy,
    explain: str | None = None,
) -> Record:
    """The record after a status call. ``paused_until``: the account's pause when the answer
    was throttled (0 otherwise); ``explain``: a readable note for an error, if any."""
    kind = classify(outcome) if isinstance(outcome, ThreadsError) else None
    if kind is ErrorKind.THROTTLED:
        assert isinstance(outcome, ThreadsError)
        return _throttled_answer(r, outcome, now=now, paused_until=paused_until, policy=policy)
    checks = r.checks + 1
    # Only an answer about the container ends a run of 100/33s (a failed request says nothing).
    changes = Changes(strikes=CLEAR) if isinstance(outcome, ContainerStatus) else Changes()
    if kind is ErrorKind.NOT_FOUND and r.strikes + 1 < NOT_FOUND_STRIKES:
        assert isinstance(outcome, ThreadsError)
        return _not_found_once(r, outcome, checks=checks, now=now, policy=policy)
    if isinstance(outcome, ContainerStatus) and outcome.status == State.FINISHED and r.publish:
        publishing = _finished_for_publish(
            r, checks=checks, changes=changes, now=now, policy=policy
        )
        if publishing is not None:
            return publishing
    decision = decide(
        schedule_of(r, policy),
        outcome,
        checks_made=checks,
        deadline=deadline_of(r, policy),
        now=now,
        previous_status=r.status,
        previous_error_message=r.error_message,
        not_final=AWAITING_PUBLISHED
        if r.publish_status == PublishStatus.UNCONFIRMED
        else frozenset(),
    )
    if decision.status == State.TIMED_OUT and decision.error is None:
        why = window_ended(replace(r, checks=checks), policy)
        decision = replace(decision, error=failure_of(why))
    if kind is ErrorKind.TOKEN:
        decision = replace(decision, hint=token_hint(r.account or "default"))
    elif explain and decision.error is not None:
        decision = replace(decision, hint=explain)
    return Record(replace(decision, checks=checks), changes)


def _throttled_answer(
    r: PollResult, outcome: ThreadsError, *, now: float, paused_until: float, policy: Policy
) -> Record:
    """A throttled answer: the check is postponed past the account's pause, not spent."""
    decision = decide_throttled(
        schedule_of(r, policy),
        now=now,
        paused_until=max(paused_until, now),
        deadline=r.deadline_at or now,
        window_delay=r.window_delay,
        max_delay=policy.max_delay,
        previous_status=r.status,
        previous_error_message=r.error_message,
        error=outcome,
    )
    return Record(decision)


def _not_found_once(
    r: PollResult, outcome: ThreadsError, *, checks: int, now: float, policy: Policy
) -> Record:
    """100/33 once is not proof: ask again at the next scheduled check (or time out)."""
    changes = Changes(strikes=r.strikes + 1)
    due = next_check_at(
        schedule_of(r, policy), checks_made=checks, deadline=deadline_of(r, policy), now=now
    )
    if due is None:
        return Record(replace(_timed_out(r, policy, outcome), checks=checks), changes)
    decision = Decision(
        r.status,
        False,
        due,
        error_message=r.error_message,
        last_api_status=r.last_api_status,
        error=failure_of(outcome, ErrorKind.NOT_FOUND),
        hint="not found once; checked again before failing",
        checks=checks,
    )
    return Record(decision, changes)


def _finished_for_publish(
    r: PollResult, *, checks: int, changes: Changes, now: float, policy: Policy
) -> Record | None:
    """FINISHED on a poll that publishes: the publish goes ahead now (the status read an
    uncertain step asked for) or after the grace (the first FINISHED); None otherwise."""
    if r.publish_status == PublishStatus.PENDING and r.publish_verify:
        # Still FINISHED (not PUBLISHED) after an uncertain step: the publish may go ahead.
        decision = Decision(
            State.FINISHED, False, now, last_api_status=State.FINISHED, checks=checks
        )
        return Record(decision, changes.merged(Changes(publish_verify=False)))
    if not r.publish_status:
        # Auto-publish: FINISHED starts the publish, after a short grace (see publishing.py).
        decision = Decision(
            State.FINISHED,
            False,
            publish_due_at(r, policy, now),
            last_api_status=State.FINISHED,
            checks=checks,
        )
        changes = changes.merged(Changes(publish_status=PublishStatus.PENDING, finished_at=now))
        return Record(decision, changes)
    return None


def quota_exhausted(used: int | None, total: int | None, *, reply: bool = False) -> Record:
    """The account's post (or, for a reply, reply) quota is used up: not published."""
    what, unit = ("reply quota", "replies") if reply else ("posting quota", "posts")
    err = PublishError(f"{what} used up: {used} of {total} {unit} in the last 24 h; not published")
    return Record(
        _publish_final(State.QUOTA_EXHAUSTED, err),
        Changes(publish_status=PublishStatus.QUOTA_EXHAUSTED),
    )


def publish_quota(r: PollResult, limit: PublishingLimit) -> tuple[Changes, Record | None]:
    """The quota a publish spends, read just before it: a reply spends the reply quota
    (1000 / 24 h), anything else (a carousel too: one post) the post quota (250 / 24 h).
    Returns the figures to store and, when none is left, the final record."""
    reply = r.reply_to is not None
    config = limit.reply_config if reply else limit.config
    used = limit.reply_quota_usage if reply else limit.quota_usage
    total = config.quota_total if config else None
    changes = (
        Changes(reply_quota_usage=used, reply_quota_total=total)
        if reply
        else Changes(quota_usage=used, quota_total=total)
    )
    if limit.remaining("reply" if reply else "quota") != 0:
        # Unknown (None) does not block: the publish call enforces the quota anyway.
        return changes, None
    rec = quota_exhausted(used, total, reply=reply)
    return changes, replace(rec, changes=changes.merged(rec.changes))


def publish_unacknowledged(
    r: PollResult, *, acked: int, needed: int, now: float, policy: Policy
) -> Record:
    """The publish claim did not reach enough replicas in time: a failover now could bring back
    a Redis without it, and a second run would publish again. So nothing is published: the
    claim is given back (the attempt stays spent, which bounds the retries), and the next run
    reads the status first (``publish_verify``), publishing only if it is still FINISHED."""
    err = PublishError(
        f"not published yet: the publish claim reached {acked} of {needed} Redis replicas "
        "in time; tried again after a status read"
    )
    attempts = r.publish_attempts + 1
    if attempts >= policy.publish_max_attempts:
        return Record(
            _publish_final(State.PUBLISH_FAILED, err), Changes(publish_status=PublishStatus.FAILED)
        )
    decision = Decision(
        State.FINISHED,
        False,
        now + max(policy.publish_grace, policy.schedule.interval / 4, 0.05),
        last_api_status=State.FINISHED,
        error=failure_of(err),
    )
    return Record(decision, Changes(publish_status=PublishStatus.PENDING, publish_verify=True))


def given_up(r: PollResult, why: BaseException) -> Record:
    """Too many runs without a settled outcome: the poll ends, saying why. A publish claimed by
    a run that never recorded its answer may have posted, so that ending is
    PUBLISH_UNCONFIRMED, like every other ending after an ambiguous publish."""
    rec = Record(timed_out(r.last_api_status or r.status, r.error_message, error=why))
    if r.publish_status == PublishStatus.IN_FLIGHT:
        rec = replace(rec, changes=Changes(publish_status=PublishStatus.UNCONFIRMED))
    return _settle_unconfirmed(r, rec)


def publish_not_claimed(claim: str, policy: Policy) -> Record | Skip:
    if claim == "exhausted":
        err = PublishError(f"not published after {policy.publish_max_attempts} attempts")
        return Record(
            _publish_final(State.PUBLISH_FAILED, err), Changes(publish_status=PublishStatus.FAILED)
        )
    return Skip(f"publish not claimed: {claim}")


NEEDS_RECREATE_HINT = (
    "this container cannot be published (24/4279009 'Media Not Found' on every attempt after "
    "FINISHED): create a new container and publish that"
)


EXPIRED_HINT = (
    "the container expired before it was published (2207020): create a new container and "
    "publish that"
)


@settles_unconfirmed
def after_publish(
    r: PollResult,
    verdict: PublishVerdict,
    *,
    media_id: str | None,
    error: BaseException | None,
    now: float,
    policy: Policy,
    paused_until: float = 0.0,
) -> Record:
    """The record after a publish call (``r`` as it was before the claim). ``paused_until``:
    the account's pause after a throttled answer (0 otherwise)."""
    if verdict is PublishVerdict.PUBLISHED:
        return Record(
            _publish_final(State.PUBLISHED),
            Changes(
                publish_status=PublishStatus.PUBLISHED, media_id=media_id or "", published_at=now
            ),
        )
    if verdict is PublishVerdict.UNCONFIRMED:
        return Record(
            back_to_polling(r, policy, now, error),
            Changes(publish_status=PublishStatus.UNCONFIRMED),
        )
    if verdict is PublishVerdict.THROTTLED:
        # Certainly not published; the account's pause (noted by the job) says when to try
        # again, and a rate limit is not the container's fault: no attempt is spent.
        decision = Decision(
            State.FINISHED,
            False,
            max(paused_until, now + max(policy.publish_grace, 0.05)),
            last_api_status=State.FINISHED,
            error=failure_of(error, ErrorKind.THROTTLED),
        )
        return Record(
            decision,
            Changes(publish_status=PublishStatus.PENDING, publish_attempts=r.publish_attempts),
        )
    attempts = r.publish_attempts + 1
    if verdict is PublishVerdict.NOT_READY and attempts >= policy.publish_max_attempts:
        decision = replace(
            _publish_final(State.NEEDS_RECREATE, error),
            hint=f"{NEEDS_RECREATE_HINT} ({attempts} attempts)",
        )
        return Record(decision, Changes(publish_status=PublishStatus.NEEDS_RECREATE))
    if verdict in (PublishVerdict.NOT_READY, PublishVerdict.RETRY_LATER):
        # Certainly not published: release the claim for a later attempt. "Not ready" after
        # FINISHED has cleared for others when retried a little later, and later still.
        wait = (
            not_ready_backoff(policy, attempts)
            if verdict is PublishVerdict.NOT_READY
            else policy.schedule.interval
        )
        decision = Decision(
            State.FINISHED,
            False,
            now + max(wait, 0.05),
            last_api_status=State.FINISHED,
            error=failure_of(error),
        )
        return Record(decision, Changes(publish_status=PublishStatus.PENDING))
    if verdict is PublishVerdict.QUOTA_EXHAUSTED:
        return Record(
            _publish_final(State.QUOTA_EXHAUSTED, error),
            Changes(publish_status=PublishStatus.QUOTA_EXHAUSTED),
        )
    if verdict is PublishVerdict.EXPIRED:
        # The API says the container expired before the publish: it ends as the API would
        # report it, certainly unpublished, and the operator is told to create a new one.
        decision = replace(_publish_final(State.EXPIRED, error), hint=EXPIRED_HINT)
        return Record(decision, Changes(publish_status=PublishStatus.NEEDS_RECREATE))
    return Record(
        _publish_final(State.PUBLISH_FAILED, error), Changes(publish_status=PublishStatus.FAILED)
    )


def graph_code(error: ThreadsError) -> str:
    return f"{error.code}/{error.subcode}" if isinstance(error, GraphAPIError) else ""
