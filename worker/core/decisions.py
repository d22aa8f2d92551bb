"""Pure decision logic: what a check's outcome means, and when (if ever) to check again.

No I/O and no clock here: the caller passes ``now``. Everything the scheduler does is decided by
these functions, so the schedule is tested without Redis or a network.

The schedule: the first check runs as soon as the container is enqueued; each later check runs one
interval after the previous one ended (never sooner, so Meta's "once per minute" holds even after
a worker outage), for at most ``max_checks`` checks, and none is scheduled past the window's
deadline (fixed at enqueue time, so retries and restarts cannot stretch it) plus a small slack
that absorbs scheduling jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from api_client.errors import ThreadsError
from api_client.models import ContainerStatus
from api_client.policy import ErrorKind, classify
from worker.core.errors import Failure, WindowEndedError, failure_of
from worker.core.states import API_FINAL_STATES, State

# Jitter allowance for the last check: a half interval, but never more than 5 s.
MAX_DEADLINE_SLACK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Schedule:
    interval: float
    window: float

    @property
    def max_checks(self) -> int:
        # The epsilon keeps 1.0 / 0.2 from flooring to 4 in binary floating point.
        return math.floor(self.window / self.interval + 1e-9) + 1

    @property
    def slack(self) -> float:
        return min(self.interval / 2, MAX_DEADLINE_SLACK_SECONDS)


_KINDS = frozenset(k.value for k in ErrorKind)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write after a check, and whether another one follows."""

    status: str
    final: bool
    next_check_at: float | None
    error_message: str | None = None
    # Status last reported by the API; kept on TIMED_OUT so callers see where it stalled.
    last_api_status: str | None = None
    # Why it failed (the one typed failure value: worker.core.errors.failure_of builds it).
    error: Failure | None = None
    # False when the check was deferred for throttling: it does not use up one of the checks.
    spent: bool = True
    # What the operator should do about the error, stored after it in ``last_error``.
    hint: str | None = None
    # Seconds this decision pushes the window's end out (throttling only).
    delay_added: float = 0.0
    # The number of checks to record (None: unchanged).
    checks: int | None = None
    # False: only re-schedule the run (an early run, a paused account's publish); the poll's
    # status, error and counters stay as they are.
    touch: bool = True

    @property
    def error_kind(self) -> ErrorKind | None:
        """The policy's kind of the failure (None for none, or for the service's own)."""
        if self.error is None or self.error.kind not in _KINDS:
            return None
        return ErrorKind(self.error.kind)


def effective_deadline(deadline: float, window_delay: float, max_delay: float) -> float:
    """The window's end: fixed at enqueue, pushed out by throttling up to ``max_delay``."""
    return deadline + min(window_delay, max_delay)


def decide_throttled(
    schedule: Schedule,
    *,
    now: float,
    paused_until: float,
    deadline: float,
    window_delay: float,
    max_delay: float,
    previous_status: str,
    previous_error_message: str | None,
    error: ThreadsError | None,
) -> Decision:
    """The account is throttled: postpone the check rather than spend it.

    The next check waits for the account's pause to end (and at least one interval); the time
    this check loses is added to the window, up to ``max_delay`` in all, after which the
    container times out like any other.
    """
    due = max(paused_until, now + schedule.interval)
    added = due - now
    end = effective_deadline(deadline, window_delay + added, max_delay)
    kind = ErrorKind.THROTTLED if error is not None else None
    if due > end + schedule.slack:
        # Always say why it stopped: with no answer to quote (the account was paused before
        # this check was sent), the reason is the pause outlasting what the window may absorb.
        why: ThreadsError | WindowEndedError = error or WindowEndedError(
            f"no final status within the window: the account is throttled for "
            f"{max(0.0, paused_until - now):.0f}s more, and throttling and pacing may push the "
            f"window out by {max_delay:.0f}s at most (THROTTLE_MAX_DELAY_SECONDS); "
            f"{window_delay:.1f}s used"
        )
        # The answer (or the pause) that ended the window was throttled: not a check. A spent
        # decision would add a check entry to the history that ``checks`` never counted.
        return replace(
            timed_out(
                previous_status, previous_error_message, error=why, error_kind=ErrorKind.THROTTLED
            ),
            spent=False,
        )
    return Decision(
        status=previous_status,
        final=False,
        next_check_at=due,
        error_message=previous_error_message,
        error=failure_of(error, kind),
        spent=False,
        delay_added=added,
    )


def next_check_at(
    schedule: Schedule, *, checks_made: int, deadline: float, now: float
) -> float | None:
    """When the next check is due, or None when the window allows no more."""
    if checks_made >= schedule.max_checks:
        return None
    due = now + schedule.interval
    if due > deadline + schedule.slack:
        return None
    return due


# A run this close to its due time is on time: the runner claims a job when its score (ms) is
# due, and the score and next_check_at are computed a few ms apart.
EARLY_TOLERANCE_SECONDS = 1.0


def wait_before_check(next_check: float | None, *, now: float) -> float:
    """Seconds until the check is due, 0 when it is (or nearly is).

    The job's score (when the runner claims it) and the poll's ``next_check_at`` (when the
    check is due) are two fields; the record script writes both at once, but a job made due by
    another path (given back to its queue, resumed, written by another client) can come before
    its check. Waiting keeps the once-per-interval promise instead of spending an API call.
    """
    if next_check is None or next_check - now <= EARLY_TOLERANCE_SECONDS:
        return 0.0
    return next_check - now


def window_closed(schedule: Schedule, *, checks_made: int, deadline: float, now: float) -> bool:
    """True when a check that is about to run should not call the API any more.

    A container always gets its first check, however late the worker gets to it.
    """
    if checks_made == 0:
        return False
    return checks_made >= schedule.max_checks or now > deadline + schedule.slack


def decide(
    schedule: Schedule,
    outcome: ContainerStatus | ThreadsError,
    *,
    checks_made: int,
    deadline: float,
    now: float,
    previous_status: str,
    previous_error_message: str | None = None,
    not_final: frozenset[str] = frozenset(),
) -> Decision:
    """The state after one check. ``checks_made`` counts this check.

    ``not_final`` lists API statuses that do not end this poll (FINISHED, while an ambiguous
    auto-publish waits to be confirmed by PUBLISHED).
    """
    if isinstance(outcome, ContainerStatus):
        if outcome.status in API_FINAL_STATES and outcome.status not in not_final:
            return Decision(
                status=outcome.status,
                final=True,
                next_check_at=None,
                error_message=outcome.error_message,
                last_api_status=outcome.status,
            )
        status, error_message, error, kind = outcome.status, outcome.error_message, None, None
        last_api_status: str | None = outcome.status
    else:
        kind = classify(outcome)
        if kind.is_fatal:
            return Decision(
                status=State.FAILED,
                final=True,
                next_check_at=None,
                error_message=None,
                error=failure_of(outcome, kind),
            )
        # A failed request says nothing about the container: keep what we knew.
        status, error_message, error = previous_status, previous_error_message, outcome
        last_api_status = None

    due = next_check_at(schedule, checks_made=checks_made, deadline=deadline, now=now)
    if due is None:
        return timed_out(
            last_api_status or previous_status, error_message, error=error, error_kind=kind
        )
    return Decision(
        status=status,
        final=False,
        next_check_at=due,
        error_message=error_message,
        last_api_status=last_api_status,
        error=failure_of(error, kind),
    )


def timed_out(
    last_status: str,
    last_error_message: str | None,
    *,
    error: BaseException | Failure | None = None,
    error_kind: str | None = None,
) -> Decision:
    return Decision(
        status=State.TIMED_OUT,
        final=True,
        next_check_at=None,
        error_message=last_error_message,
        last_api_status=None if last_status == State.QUEUED else last_status,
        error=failure_of(error, error_kind),
    )
