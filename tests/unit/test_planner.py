"""The lifecycle planner (worker.core.planner), pure: no Redis, no network, no clock.

The last test models one poll as a state machine: the scheduler, the planner, the API, crashes,
and the two Redis scripts that write a poll (record.lua through ``store.record_fields``, and
publish_claim.lua), and checks that whatever happens a container is published at most once, every
poll ends in a bounded time, and a final state stays final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from api_client.errors import (
    GraphAPIError,
    NetworkError,
    RequestTimeoutError,
    ThreadsError,
)
from api_client.models import ContainerStatus, PublishingLimit, QuotaConfig
from api_client.policy import ErrorKind
from worker.core.decisions import EARLY_TOLERANCE_SECONDS, Schedule
from worker.core.errors import failure_of
from worker.core.planner import (
    CallPublish,
    CallStatus,
    Phase,
    Plan,
    Policy,
    Record,
    Skip,
    TokenState,
    after_publish,
    after_status,
    children_deadline,
    not_ready_backoff,
    phase_of,
    plan_run,
    publish_not_claimed,
    publish_quota,
    quota_exhausted,
)
from worker.core.publishing import PublishStatus, PublishVerdict, judge_publish
from worker.core.result import CLEAR, Changes, PollResult, ms_stamp, stamp
from worker.core.states import State
from worker.store.results import record_fields

POLICY = Policy(
    schedule=Schedule(interval=1.0, window=5.0),
    max_delay=10.0,
    publish_grace=0.5,
    publish_max_attempts=3,
)
T0 = 1_700_000_000.0
DEADLINE = T0 + 5.0
SLACK = POLICY.schedule.slack  # 0.5


def load(h: Mapping[str, str]) -> PollResult:
    """``PollResult.from_hash`` of a hash written with str keys and values."""
    raw: dict[bytes | str, bytes | str] = dict(h.items())
    return PollResult.from_hash(raw)


def poll(**fields: object) -> PollResult:
    """A poll as its result hash holds it: the enqueue fields, then ``fields`` (None drops one)."""
    h: dict[str, str] = {
        "container_id": "1",
        "status": State.QUEUED,
        "final": "0",
        "enqueued_at": stamp(T0),
        "deadline_at": stamp(DEADLINE),
        "generation": "g1",
        "next_check_at": stamp(T0),
    }
    for k, v in fields.items():
        if v is None:
            h.pop(k, None)
        else:
            h[k] = "1" if v is True else "0" if v is False else str(v)
    return load(h)


def publish_due(**fields: object) -> PollResult:
    due: dict[str, object] = {
        "status": State.FINISHED,
        "last_api_status": State.FINISHED,
        "checks": 2,
        "publish": True,
        "publish_status": PublishStatus.PENDING,
    }
    return poll(**{**due, **fields})


def plan(r: PollResult | None, now: float, **kw: object) -> Plan:
    throttled_until = kw.pop("throttled_until", 0.0)
    token = kw.pop("token", TokenState.OK)
    policy = kw.pop("policy", POLICY)
    assert not kw
    assert isinstance(throttled_until, float)
    assert isinstance(token, TokenState)
    assert isinstance(policy, Policy)
    return plan_run(r, throttled_until=throttled_until, token=token, now=now, policy=policy)


def as_record(p: Plan) -> Record:
    assert isinstance(p, Record), p
    return p


def status_record(
    r: PollResult, outcome: ContainerStatus | ThreadsError, now: float, paused_until: float = 0.0
) -> Record:
    return after_status(r, outcome, now=now, paused_until=paused_until, policy=POLICY)


def cs(value: str, msg: str | None = None) -> ContainerStatus:
    return ContainerStatus("1", value, msg)


def not_found() -> GraphAPIError:
    return GraphAPIError("does not exist", code=100, subcode=33, http_status=400)


def throttled_error() -> GraphAPIError:
    return GraphAPIError("limit", code=4, is_transient=True, http_status=400)


def apply(r: PollResult, rec: Record, now: float) -> PollResult:
    """The poll after record.lua wrote ``rec`` (the unit tests' short version of the model)."""
    h = dict(hash_of(r))
    write_record(h, r, rec, now_ms=int(now * 1000), checked_at=now)
    return load(h)


def hash_of(r: PollResult) -> dict[str, str]:
    """Enough of ``r`` as a hash to rebuild it (the fields these tests use)."""
    h: dict[str, str] = {"updated_at": "1"}
    for name, value in r.to_dict().items():
        if value is None or value == "" or value is False or value == 0 or value == []:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        h[name] = "1" if value is True else str(value)
    h["generation"] = r.generation
    h["final"] = "1" if r.final else "0"
    return h


# --- phase_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "phase"),
    [
        ({}, Phase.POLLING),
        ({"status": State.IN_PROGRESS, "checks": 1}, Phase.POLLING),
        ({"status": State.IN_PROGRESS, "publish": True}, Phase.POLLING),
        ({"status": State.ERROR, "final": True}, Phase.FINAL),
        (
            {
                "status": State.PUBLISHED,
                "final": True,
                "publish": True,
                "publish_status": "pending",
            },
            Phase.FINAL,
        ),
        (
            {"status": State.FINISHED, "publish": True, "publish_status": "pending"},
            Phase.PUBLISH_DUE,
        ),
        (
            {"status": State.FINISHED, "publish": True, "publish_status": "in_flight"},
            Phase.PUBLISH_IN_FLIGHT,
        ),
        (
            {"status": State.FINISHED, "publish": True, "publish_status": "unconfirmed"},
            Phase.AWAITING_PUBLISHED,
        ),
        # A throttled or failed check keeps the status; publish_status is what says "awaiting".
        (
            {"status": State.TIMED_OUT, "publish": True, "publish_status": "unconfirmed"},
            Phase.AWAITING_PUBLISHED,
        ),
    ],
)
def test_phase_of(fields: dict[str, object], phase: Phase) -> None:
    assert phase_of(poll(**fields)) is phase


# --- plan_run ---------------------------------------------------------------------------------


def test_no_poll_or_a_final_one_is_skipped() -> None:
    assert isinstance(plan(None, T0), Skip)
    done = poll(status=State.FINISHED, final=True, next_check_at=None)
    for token in TokenState:
        assert isinstance(plan(done, T0 + 100, token=token, throttled_until=T0 + 500), Skip)


def test_an_early_run_defers_to_the_due_time_without_touching_the_poll() -> None:
    r = poll(status=State.IN_PROGRESS, checks=1, next_check_at=stamp(T0 + 3.0), updated_at=1)
    rec = as_record(plan(r, T0 + 1.0))
    d = rec.decision
    assert not d.final and not d.touch and d.next_check_at == r.next_check_at
    assert rec.changes.hash_fields() == {}
    # Only the job's next run is written: no status, no error, no counter.
    assert record_fields(r, d, checked_at=None, changes=rec.changes) == {}


def test_a_run_within_the_tolerance_of_its_due_time_is_on_time() -> None:
    r = poll(status=State.IN_PROGRESS, checks=1, next_check_at=stamp(T0 + 2.0))
    assert isinstance(plan(r, T0 + 2.0 - EARLY_TOLERANCE_SECONDS), CallStatus)


def test_the_first_check_always_runs_however_late() -> None:
    assert isinstance(plan(poll(), T0 + 1000.0), CallStatus)


@pytest.mark.parametrize(
    ("fields", "now", "words"),
    [
        # The window's end passed (plus its slack).
        ({"checks": 3, "last_api_status": "IN_PROGRESS"}, DEADLINE + SLACK + 0.1, "3 checks"),
        ({"checks": 1}, DEADLINE + SLACK + 0.1, "(1 check)"),
        # Every check of the window was used (window 5 s / interval 1 s: 6 checks).
        ({"checks": 6, "last_api_status": "IN_PROGRESS"}, T0 + 4.0, "6 checks"),
    ],
)
def test_a_closed_window_times_out_saying_why(
    fields: dict[str, object], now: float, words: str
) -> None:
    r = poll(status=State.IN_PROGRESS, next_check_at=stamp(now - 1), **fields)
    d = as_record(plan(r, now)).decision
    assert d.final and d.status == State.TIMED_OUT and d.next_check_at is None
    assert d.error is not None and d.error.type == "WindowEndedError"
    assert "no final status within the window" in str(d.error) and words in str(d.error)
    if r.last_api_status:
        assert d.last_api_status == r.last_api_status
        assert f"last status {r.last_api_status}" in str(d.error)
    assert record_fields(r, d, checked_at=None, changes=None)["last_error"] == str(d.error)


def test_a_window_pushed_out_by_throttling_says_so() -> None:
    r = poll(status=State.IN_PROGRESS, checks=2, window_delay="10.0", next_check_at=stamp(T0))
    now = DEADLINE + 10.0 + SLACK + 0.1
    err = as_record(plan(r, now)).decision.error
    assert err is not None and err.type == "WindowEndedError"
    assert "pushed it out by 10.0s" in str(err) and "THROTTLE_MAX_DELAY_SECONDS" in str(err)
    # ...and inside the pushed-out window it is still checked.
    assert isinstance(plan(r, now - 1.0), CallStatus)


@pytest.mark.parametrize(
    ("token", "words"),
    [(TokenState.MISSING, "no access token"), (TokenState.REJECTED, "was rejected")],
)
def test_no_usable_token_fails_with_the_hint(token: TokenState, words: str) -> None:
    d = as_record(plan(poll(status=State.IN_PROGRESS, checks=1), T0 + 1, token=token)).decision
    assert d.final and d.status == State.FAILED and d.error_kind is ErrorKind.TOKEN
    assert d.error is not None and words in d.error.message
    assert d.hint is not None and "THREADS_ACCESS_TOKEN" in d.hint
    fields = record_fields(poll(), d, checked_at=None, changes=None)
    assert fields["last_error"] == f"{d.error}; {d.hint}"
    # The account is named, with where its token goes.
    d42 = as_record(plan(poll(account="42"), T0, token=token)).decision
    assert d42.hint is not None and "THREADS_ACCESS_TOKEN_42" in d42.hint


@pytest.mark.parametrize("token", [TokenState.MISSING, TokenState.REJECTED])
def test_no_usable_token_when_publishing_is_publish_failed(token: TokenState) -> None:
    rec = as_record(plan(publish_due(), T0 + 3, token=token))
    d = rec.decision
    assert d.final and d.status == State.PUBLISH_FAILED and d.last_api_status == State.FINISHED
    # Like every other PUBLISH_FAILED: a final poll never says its publish is still due.
    assert rec.changes.hash_fields() == {"publish_status": PublishStatus.FAILED}
    assert d.error is not None and d.error.kind == "token"
    assert d.hint is not None and "THREADS_ACCESS_TOKEN" in d.hint


def test_a_throttled_account_defers_the_check_without_spending_it() -> None:
    r = poll(status=State.IN_PROGRESS, checks=1, next_check_at=stamp(T0 + 1))
    rec = as_record(plan(r, T0 + 1, throttled_until=T0 + 4.0))
    d = rec.decision
    assert not d.final and not d.spent and d.delay_added == pytest.approx(3.0)
    assert d.next_check_at == T0 + 4.0 and d.status == State.IN_PROGRESS
    fields = record_fields(r, d, checked_at=T0 + 1, changes=rec.changes)
    assert fields["throttled"] == "1" and fields["window_delay"] == "3.000"
    assert "checks" not in fields
    # A pause longer than the window may be pushed out times out instead.
    long = as_record(plan(r, T0 + 1, throttled_until=T0 + 60.0)).decision
    assert long.final and long.status == State.TIMED_OUT
    # ... and says why, though no answer was received to quote.
    assert long.error is not None and long.error.kind == ErrorKind.THROTTLED
    assert "throttled for 59s more" in long.error.message
    assert "THROTTLE_MAX_DELAY_SECONDS" in long.error.message
    assert record_fields(r, long, checked_at=T0 + 1, changes=None)["last_error"]


def test_publishing_obeys_the_account_pause() -> None:
    r = publish_due(next_check_at=stamp(T0 + 3))
    rec = as_record(plan(r, T0 + 3, throttled_until=T0 + 40.0))
    d = rec.decision
    assert not d.final and not d.touch and d.next_check_at == T0 + 40.0
    assert rec.changes.hash_fields() == {}
    assert record_fields(r, d, checked_at=None, changes=rec.changes) == {}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"throttled_until": T0 + 100.0},
        {"token": TokenState.MISSING},
    ],
)
def test_a_publish_in_flight_is_never_repeated(kw: dict[str, object]) -> None:
    r = publish_due(publish_status=PublishStatus.IN_FLIGHT, publish_attempts=1)
    rec = as_record(plan(r, T0 + 3, **kw))
    d = rec.decision
    assert rec.changes.hash_fields() == {"publish_status": PublishStatus.UNCONFIRMED}
    assert not d.final and d.status == State.FINISHED and d.next_check_at == T0 + 4.0
    assert (d.error is not None and d.error.type == "PublishError") and "unknown" in str(d.error)
    after = apply(r, rec, T0 + 3)
    assert phase_of(after) is Phase.AWAITING_PUBLISHED
    assert isinstance(plan(after, T0 + 4.0), CallStatus)


def test_a_publish_in_flight_past_the_window_times_out_unconfirmed() -> None:
    r = publish_due(publish_status=PublishStatus.IN_FLIGHT, publish_attempts=1)
    rec = as_record(plan(r, DEADLINE + 30))
    # Issue 14: distinct from TIMED_OUT, telling the operator to look before reposting.
    assert rec.decision.final and rec.decision.status == State.PUBLISH_UNCONFIRMED
    assert rec.decision.hint is not None and "before reposting" in rec.decision.hint
    assert rec.changes.hash_fields() == {"publish_status": PublishStatus.UNCONFIRMED}


def test_a_due_publish_is_called_even_past_the_window() -> None:
    assert isinstance(plan(publish_due(), T0 + 3), CallPublish)
    assert isinstance(plan(publish_due(), DEADLINE + 30), CallPublish)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"status": State.IN_PROGRESS, "checks": 2},
        {"status": State.FINISHED, "checks": 2, "publish": True, "publish_status": "unconfirmed"},
    ],
)
def test_otherwise_the_status_is_checked(fields: dict[str, object]) -> None:
    assert isinstance(plan(poll(**fields), T0 + 2), CallStatus)


# --- after_status -----------------------------------------------------------------------------


@pytest.mark.parametrize("final", [State.FINISHED, State.PUBLISHED, State.ERROR, State.EXPIRED])
def test_final_api_states_end_the_poll(final: str) -> None:
    r = poll(status=State.IN_PROGRESS, checks=1)
    rec = status_record(r, cs(final, "UNKNOWN" if final == State.ERROR else None), T0 + 1)
    d = rec.decision
    assert d.final and d.status == final and d.last_api_status == final and d.checks == 2
    assert rec.changes.hash_fields() == {"strikes": ""}
    if final == State.ERROR:
        assert d.error_message == "UNKNOWN"


def test_in_progress_schedules_the_next_check() -> None:
    d = status_record(poll(), cs(State.IN_PROGRESS), T0).decision
    assert not d.final and d.next_check_at == T0 + 1.0 and d.checks == 1


def test_in_progress_at_the_last_check_times_out_saying_why() -> None:
    r = poll(status=State.IN_PROGRESS, checks=5)
    d = status_record(r, cs(State.IN_PROGRESS), T0 + 5).decision
    assert d.final and d.status == State.TIMED_OUT and d.last_api_status == State.IN_PROGRESS
    assert (d.error is not None and d.error.type == "WindowEndedError") and "6 checks" in str(
        d.error
    )


def test_not_found_once_is_checked_again() -> None:
    r = poll(status=State.IN_PROGRESS, checks=1)
    rec = status_record(r, not_found(), T0 + 1)
    d = rec.decision
    assert not d.final and d.status == State.IN_PROGRESS
    assert d.next_check_at == T0 + 2.0 and d.checks == 2
    assert d.error_kind is ErrorKind.NOT_FOUND and d.hint and "again" in d.hint
    assert rec.changes.hash_fields() == {"strikes": "1"}


def test_not_found_once_at_the_last_check_times_out_with_the_error() -> None:
    r = poll(status=State.IN_PROGRESS, checks=5)
    rec = status_record(r, not_found(), T0 + 5)
    d = rec.decision
    assert d.final and d.status == State.TIMED_OUT and d.checks == 6
    assert (
        d.error is not None and d.error.type == "GraphAPIError"
    ) and d.error_kind is ErrorKind.NOT_FOUND


def test_not_found_twice_in_a_row_fails() -> None:
    r = poll(status=State.IN_PROGRESS, checks=2, strikes=1)
    d = status_record(r, not_found(), T0 + 2).decision
    assert d.final and d.status == State.FAILED and d.error_kind is ErrorKind.NOT_FOUND


@pytest.mark.parametrize(
    "between",
    [NetworkError("reset"), RequestTimeoutError("slow"), throttled_error()],
    ids=["network", "timeout", "throttled"],
)
def test_a_failed_request_between_two_not_founds_keeps_the_strike(between: ThreadsError) -> None:
    r = apply(poll(), status_record(poll(), not_found(), T0), T0)
    assert r.strikes == 1 and not r.final
    rec = status_record(r, between, T0 + 1, paused_until=T0 + 2)
    assert "strikes" not in rec.changes.hash_fields() and not rec.decision.final
    r = apply(r, rec, T0 + 1)
    assert r.strikes == 1
    d = status_record(r, not_found(), T0 + 2).decision
    assert d.final and d.status == State.FAILED


def test_an_answer_about_the_container_resets_the_strikes() -> None:
    r = apply(poll(), status_record(poll(), not_found(), T0), T0)
    rec = status_record(r, cs(State.IN_PROGRESS), T0 + 1)
    assert rec.changes.hash_fields() == {"strikes": ""}
    r = apply(r, rec, T0 + 1)
    assert r.strikes == 0
    d = status_record(r, not_found(), T0 + 2).decision
    assert not d.final


def test_finished_with_publish_makes_the_publish_due_after_the_grace() -> None:
    r = poll(status=State.IN_PROGRESS, checks=1, publish=True)
    rec = status_record(r, cs(State.FINISHED), T0 + 1)
    d = rec.decision
    assert not d.final and d.status == State.FINISHED and d.checks == 2
    assert d.next_check_at == T0 + 1 + POLICY.publish_grace
    assert rec.changes.hash_fields()["publish_status"] == PublishStatus.PENDING
    assert rec.changes.hash_fields()["finished_at"] == f"{T0 + 1:.3f}"
    after = apply(r, rec, T0 + 1)
    assert phase_of(after) is Phase.PUBLISH_DUE
    assert isinstance(plan(after, T0 + 1 + POLICY.publish_grace), CallPublish)


def test_a_throttled_answer_does_not_spend_the_check() -> None:
    r = poll(status=State.IN_PROGRESS, checks=2)
    rec = status_record(r, throttled_error(), T0 + 2, paused_until=T0 + 5)
    d = rec.decision
    assert not d.final and not d.spent and d.delay_added == pytest.approx(3.0)
    assert d.next_check_at == T0 + 5 and d.checks is None and d.error_kind is ErrorKind.THROTTLED
    assert rec.changes.hash_fields() == {}
    after = apply(r, rec, T0 + 2)
    assert after.checks == 2 and after.throttled == 1 and after.window_delay == pytest.approx(3)
    # No pause known (0): the next interval.
    d0 = status_record(r, throttled_error(), T0 + 2, paused_until=0.0).decision
    assert d0.next_check_at == T0 + 3 and not d0.spent


def test_unconfirmed_publish_keeps_polling_on_finished_until_published() -> None:
    r = poll(
        status=State.FINISHED,
        last_api_status=State.FINISHED,
        checks=2,
        publish=True,
        publish_status=PublishStatus.UNCONFIRMED,
        publish_attempts=1,
    )
    rec = status_record(r, cs(State.FINISHED), T0 + 3)
    assert not rec.decision.final and rec.decision.next_check_at == T0 + 4
    assert "publish_status" not in rec.changes.hash_fields()
    r = apply(r, rec, T0 + 3)
    assert phase_of(r) is Phase.AWAITING_PUBLISHED
    d = status_record(r, cs(State.PUBLISHED), T0 + 4).decision
    assert d.final and d.status == State.PUBLISHED
    # ... and says the media id is unknown.
    assert status_record(r, cs(State.PUBLISHED), T0 + 4).changes.publish_note
    # The window ends first: PUBLISH_UNCONFIRMED (issue 14; was TIMED_OUT), still unconfirmed.
    last = status_record(r, cs(State.FINISHED), DEADLINE + SLACK)
    assert last.decision.final and last.decision.status == State.PUBLISH_UNCONFIRMED
    assert last.decision.error is not None and "within the window" in str(last.decision.error)


def test_a_rejected_token_fails_with_the_hint() -> None:
    err = GraphAPIError("bad token", code=190, http_status=400)
    d = status_record(poll(account="7"), err, T0).decision
    assert d.final and d.status == State.FAILED and d.error_kind is ErrorKind.TOKEN
    assert d.hint is not None and "THREADS_ACCESS_TOKEN_7" in d.hint


def test_an_explained_error_carries_the_explanation() -> None:
    err = GraphAPIError("Tried accessing nonexisting field (status)", code=100, http_status=400)
    d = after_status(poll(), err, now=T0, paused_until=0, policy=POLICY, explain="why").decision
    assert d.final and d.status == State.FAILED and d.hint == "why"


# --- after_publish ----------------------------------------------------------------------------


def publish_record(
    verdict: PublishVerdict,
    *,
    attempts: int = 0,
    now: float = T0 + 3,
    media_id: str | None = None,
    error: ThreadsError | None = None,
) -> Record:
    r = publish_due(publish_attempts=attempts)
    return after_publish(r, verdict, media_id=media_id, error=error, now=now, policy=POLICY)


def test_published() -> None:
    rec = publish_record(PublishVerdict.PUBLISHED, media_id="m1")
    assert rec.decision.final and rec.decision.status == State.PUBLISHED
    assert rec.changes.hash_fields() == {
        "publish_status": PublishStatus.PUBLISHED,
        "media_id": "m1",
        "published_at": f"{T0 + 3:.3f}",
    }


def test_unconfirmed_goes_back_to_polling() -> None:
    err = RequestTimeoutError("slow")
    rec = publish_record(PublishVerdict.UNCONFIRMED, error=err)
    d = rec.decision
    assert not d.final and d.status == State.FINISHED and d.next_check_at == T0 + 4
    assert d.error == failure_of(err) and rec.changes.hash_fields() == {
        "publish_status": PublishStatus.UNCONFIRMED
    }
    late = publish_record(PublishVerdict.UNCONFIRMED, error=err, now=DEADLINE + 30)
    assert late.decision.final and late.decision.status == State.PUBLISH_UNCONFIRMED
    assert late.decision.error == failure_of(err)
    assert late.changes.hash_fields() == {"publish_status": PublishStatus.UNCONFIRMED}


def test_not_ready_is_tried_again_with_back_off_then_needs_recreate() -> None:
    err = GraphAPIError("not ready", code=24, subcode=4279009, http_status=400)
    rec = publish_record(PublishVerdict.NOT_READY, attempts=0, error=err)
    assert not rec.decision.final and rec.decision.next_check_at == T0 + 3 + 0.5
    assert rec.changes.hash_fields() == {"publish_status": PublishStatus.PENDING}
    # The wait doubles: the grace after the 1st attempt, twice the grace after the 2nd.
    second = publish_record(PublishVerdict.NOT_READY, attempts=1, error=err)
    assert second.decision.next_check_at == T0 + 3 + 1.0
    # ``r`` is the poll before the claim: attempts 2 -> this was the 3rd and last. Issue 14:
    # NEEDS_RECREATE (was PUBLISH_FAILED), the Graph error kept, the way out said.
    last = publish_record(PublishVerdict.NOT_READY, attempts=2, error=err)
    assert last.decision.final and last.decision.status == State.NEEDS_RECREATE
    assert last.decision.error == failure_of(err) and last.changes.hash_fields() == {
        "publish_status": PublishStatus.NEEDS_RECREATE
    }
    assert last.decision.hint is not None and "create a new container" in last.decision.hint


def test_retry_later_waits_an_interval() -> None:
    err = NetworkError("refused", request_sent=False)
    for attempts in (0, 2):
        rec = publish_record(PublishVerdict.RETRY_LATER, attempts=attempts, error=err)
        assert not rec.decision.final and rec.decision.next_check_at == T0 + 3 + 1.0
        assert rec.changes.hash_fields() == {"publish_status": PublishStatus.PENDING}
    # Attempts used up: the next claim says so.
    done = publish_not_claimed("exhausted", POLICY)
    assert isinstance(done, Record) and done.decision.status == State.PUBLISH_FAILED
    assert "3 attempts" in str(done.decision.error)
    assert done.changes.hash_fields() == {"publish_status": PublishStatus.FAILED}


def test_quota_exhausted() -> None:
    rec = publish_record(PublishVerdict.QUOTA_EXHAUSTED, error=GraphAPIError("q", code=9))
    assert rec.decision.final and rec.decision.status == State.QUOTA_EXHAUSTED
    assert rec.changes.hash_fields() == {"publish_status": PublishStatus.QUOTA_EXHAUSTED}
    before = quota_exhausted(250, 250)
    assert before.decision.status == State.QUOTA_EXHAUSTED and "250 of 250" in str(
        before.decision.error
    )


def test_failed() -> None:
    err = GraphAPIError("nope", code=10, http_status=400)
    rec = publish_record(PublishVerdict.FAILED, error=err)
    assert rec.decision.final and rec.decision.status == State.PUBLISH_FAILED
    assert rec.decision.error == failure_of(err) and rec.changes.hash_fields() == {
        "publish_status": PublishStatus.FAILED
    }


def test_every_publish_verdict_is_covered() -> None:
    for verdict in PublishVerdict:
        rec = publish_record(verdict, media_id="m" if verdict is PublishVerdict.PUBLISHED else None)
        # Only an answer that proves nothing was published makes the publish due again.
        certainly_not = (
            PublishVerdict.NOT_READY,
            PublishVerdict.RETRY_LATER,
            PublishVerdict.THROTTLED,
        )
        assert (rec.changes.hash_fields()["publish_status"] == PublishStatus.PENDING) == (
            verdict in certainly_not
        )


def test_a_claim_held_elsewhere_is_not_a_record() -> None:
    for claim in ("in_flight", "unconfirmed", "stale", ""):
        assert isinstance(publish_not_claimed(claim, POLICY), Skip)


# --- carousels, replies, the publish's timing and quota (issue 14) ---------------------------


def carousel(**fields: object) -> PollResult:
    """A carousel's parent as enqueue.lua writes it: its job waits for its children."""
    base: dict[str, object] = {
        "children": "11,12,13",
        "children_pending": 3,
        "next_check_at": stamp(DEADLINE),
    }
    return poll(**{**base, **fields})


def test_a_carousel_parent_waits_for_its_children_without_a_call() -> None:
    r = carousel()
    assert phase_of(r) is Phase.WAITING_CHILDREN
    for now in (T0, DEADLINE, DEADLINE + 5):
        rec = as_record(plan(r, now))
        # Only a safety net: deferred to the children's latest end, nothing touched.
        assert not rec.decision.final and not rec.decision.touch
        assert rec.decision.next_check_at == children_deadline(r, POLICY)
    # Throttled or tokenless accounts change nothing: the parent makes no call to fail.
    rec = as_record(plan(r, T0, token=TokenState.MISSING, throttled_until=T0 + 100.0))
    assert not rec.decision.final


def test_ready_children_start_the_parents_own_window() -> None:
    h = hash_of(carousel())
    for child in ("11", "12"):
        child_ended(h, child, State.FINISHED, "", now_ms=int((T0 + 2) * 1000))
    assert phase_of(load(h)) is Phase.WAITING_CHILDREN and load(h).children_pending == 1
    child_ended(h, "13", State.FINISHED, "", now_ms=int((T0 + 4) * 1000))
    r = load(h)
    assert phase_of(r) is Phase.POLLING and r.children_ready_at == T0 + 4
    # Its own window starts when the last child is FINISHED, and its first check is due.
    assert r.deadline_at == pytest.approx(T0 + 4 + 5.0) and r.next_check_at == T0 + 4
    assert isinstance(plan(r, T0 + 4), CallStatus)
    # From then on it is polled like any container: IN_PROGRESS at t+9 is still in its window.
    r = apply(r, status_record(r, cs(State.IN_PROGRESS), T0 + 4), T0 + 4)
    assert isinstance(plan(r, T0 + 8.5), CallStatus)


@pytest.mark.parametrize(
    ("status", "error"),
    [(State.ERROR, "FAILED_DOWNLOADING_VIDEO"), (State.EXPIRED, ""), (State.TIMED_OUT, "")],
)
def test_a_failed_child_ends_the_parent_naming_it(status: str, error: str) -> None:
    h = hash_of(carousel())
    child_ended(h, "11", State.FINISHED, "", now_ms=int((T0 + 1) * 1000))
    child_ended(h, "12", status, error, now_ms=int((T0 + 2) * 1000))
    # The first failure wins; a later one, or the last FINISHED, changes nothing.
    child_ended(h, "13", State.FINISHED, "", now_ms=int((T0 + 3) * 1000))
    r = load(h)
    assert phase_of(r) is Phase.WAITING_CHILDREN and r.next_check_at == T0 + 2
    rec = as_record(plan(r, T0 + 2))
    d = rec.decision
    assert d.final and d.status == State.CHILD_FAILED and (d.error_message or "") == error
    assert d.error is not None and "carousel child 12 ended " + status in str(d.error)
    fields = record_fields(r, d, checked_at=None, changes=rec.changes)
    assert "12" in fields["last_error"] and "recreate" in fields["last_error"]
    if error:
        assert fields["error_message"] == error and fields["error_explanation"]


def test_children_that_never_all_finish_time_out_the_parent_saying_so() -> None:
    r = carousel(children_pending=1)
    rec = as_record(plan(r, children_deadline(r, POLICY)))
    d = rec.decision
    assert d.final and d.status == State.TIMED_OUT
    assert d.error is not None and "1 of 3 still pending" in str(d.error)


def test_a_publish_waits_the_minimum_age_and_a_reply_its_settle_time() -> None:
    policy = Policy(
        schedule=POLICY.schedule,
        max_delay=10.0,
        publish_grace=0.5,
        publish_max_attempts=3,
        publish_min_age=30.0,
        reply_settle=20.0,
    )
    post = poll(status=State.IN_PROGRESS, checks=1, publish=True)
    rec = after_status(post, cs(State.FINISHED), now=T0 + 2, paused_until=0, policy=policy)
    assert rec.decision.next_check_at == T0 + 30.0  # the age, not the grace
    late = after_status(post, cs(State.FINISHED), now=T0 + 40, paused_until=0, policy=policy)
    assert late.decision.next_check_at == T0 + 40.5  # the grace
    reply = poll(status=State.IN_PROGRESS, checks=1, publish=True, reply_to="555")
    rec = after_status(reply, cs(State.FINISHED), now=T0 + 40, paused_until=0, policy=policy)
    assert rec.decision.next_check_at == T0 + 60.0  # the reply's settle time
    # An early run (its re-schedule lost) does not publish before then.
    after = apply(reply, rec, T0 + 40)
    early = as_record(plan(after, T0 + 45, policy=policy))
    assert not early.decision.touch and early.decision.next_check_at == T0 + 60.0


def limit_of(posts_used: int, replies_used: int) -> PublishingLimit:
    return PublishingLimit(
        quota_usage=posts_used,
        config=QuotaConfig(quota_total=250, quota_duration=86400),
        reply_quota_usage=replies_used,
        reply_config=QuotaConfig(quota_total=1000, quota_duration=86400),
    )


def test_a_reply_spends_the_reply_quota_and_a_post_the_post_quota() -> None:
    post, reply = publish_due(), publish_due(reply_to="555")
    changes, stop = publish_quota(reply, limit_of(250, 10))
    assert stop is None  # posts used up, replies left: a reply goes ahead
    assert changes.hash_fields() == {"reply_quota_usage": "10", "reply_quota_total": "1000"}
    changes, stop = publish_quota(reply, limit_of(0, 1000))
    assert stop is not None and stop.decision.status == State.QUOTA_EXHAUSTED
    assert "1000 of 1000 replies" in str(stop.decision.error)
    assert stop.changes.hash_fields()["reply_quota_usage"] == "1000"
    _, stop = publish_quota(post, limit_of(3, 1000))
    assert stop is None
    changes, stop = publish_quota(post, limit_of(250, 0))
    assert stop is not None and "250 of 250 posts" in str(stop.decision.error)
    assert stop.changes.hash_fields()["publish_status"] == PublishStatus.QUOTA_EXHAUSTED
    # An unknown quota (a block the API left out) does not block the publish.
    assert publish_quota(reply, PublishingLimit(quota_usage=250))[1] is None


def test_code_10_at_publish_is_ambiguous_but_other_4xx_are_not() -> None:
    code10 = GraphAPIError("no permission", code=10, http_status=400)
    assert judge_publish(code10) is PublishVerdict.UNCONFIRMED
    assert judge_publish(GraphAPIError("perm", code=200, http_status=403)) is PublishVerdict.FAILED


def test_a_token_failure_while_unconfirmed_is_publish_unconfirmed() -> None:
    r = publish_due(publish_status=PublishStatus.UNCONFIRMED, publish_attempts=1)
    d = as_record(plan(r, T0 + 3, token=TokenState.REJECTED)).decision
    assert d.final and d.status == State.PUBLISH_UNCONFIRMED
    assert d.hint is not None and "THREADS_ACCESS_TOKEN" in d.hint and "reposting" in d.hint


# --- the state machine ------------------------------------------------------------------------

MAX_RUNS = 200
MAX_FAULTS = 5  # crashes and early wake-ups per sequence (a crash could otherwise repeat forever)
MAX_PAUSES = 5  # account pauses per sequence (each one may hold a due publish back)
RUN_TICK_MS = 1  # a run starts at least a millisecond after the previous one (Redis' clock)


def write_record(
    h: dict[str, str],
    current: PollResult,
    rec: Record,
    *,
    now_ms: int,
    checked_at: float | None,
) -> bool:
    """record.lua, without pacing: False (nothing written) when the poll is already final."""
    if h.get("final") == "1" or h.get("generation") != current.generation:
        return False
    d = rec.decision
    fields = record_fields(current, d, checked_at=checked_at, changes=rec.changes)
    h["updated_at"] = ms_stamp(now_ms)
    for k, v in fields.items():
        if v == "":
            h.pop(k, None)
        else:
            h[k] = v
    if d.final:
        h["finalized_at"] = ms_stamp(now_ms)
        h.pop("next_check_at", None)
    else:
        want = int(d.next_check_at * 1000) if d.next_check_at else 0
        h["next_check_at"] = ms_stamp(max(want, now_ms))
    return True


def claim_publish(h: dict[str, str], *, now_ms: int, max_attempts: int) -> str:
    """publish_claim.lua."""
    if h.get("final") == "1":
        return "stale"
    status = h.get("publish_status")
    if status != PublishStatus.PENDING:
        return status or ""
    attempts = int(h.get("publish_attempts") or 0) + 1
    if attempts > max_attempts:
        return "exhausted"
    h.update(
        publish_status=PublishStatus.IN_FLIGHT,
        publish_attempts=str(attempts),
        publish_claimed_at=ms_stamp(now_ms),
    )
    return "ok"


def child_ended(h: dict[str, str], child: str, status: str, error: str, *, now_ms: int) -> None:
    """record.lua's write into a carousel's parent when one of its children's poll ends (the
    parent's job made due: ``next_check_at``)."""
    if h.get("final") == "1":
        return
    if status == State.FINISHED:
        left = int(h.get("children_pending") or 0) - 1
        h["children_pending"] = str(left)
        if left <= 0 and "failed_child" not in h and "children_ready_at" not in h:
            window_ms = round((float(h["deadline_at"]) - float(h["enqueued_at"])) * 1000)
            h["children_ready_at"] = ms_stamp(now_ms)
            h["deadline_at"] = ms_stamp(now_ms + window_ms)
            h["next_check_at"] = ms_stamp(now_ms)
    elif "failed_child" not in h:
        h.update(failed_child=child, failed_child_status=status, next_check_at=ms_stamp(now_ms))
        if error:
            h["failed_child_error"] = error


@dataclass
class World:
    """Redis (the poll's hash, its account's pause), the clock, and what the API server saw."""

    h: dict[str, str]
    clock_ms: int
    throttled_until: float = 0.0
    faults: int = 0
    pauses: int = 0
    pause_total: float = 0.0
    crash_delay_total: float = 0.0
    runs: int = 0
    status_calls: int = 0
    publish_calls: int = 0
    # Throttled publish answers: a rate limit, not the container's fault, costs no attempt.
    throttled_publishes: int = 0
    # A publish call went through on the server (the container is published).
    published_on_server: bool = False
    # A publish call was answered with a media id or ambiguously: it may have published.
    maybe_published: bool = False
    # A carousel: its children whose polls have not ended yet, and the first that failed.
    children_left: list[str] = field(default_factory=list)
    child_failure: tuple[str, str, str] | None = None
    # Which quota a publish found used up ("post" / "reply").
    quota_exhausted: str | None = None

    @property
    def now(self) -> float:
        return self.clock_ms / 1000

    def crash(self, delay: float) -> None:
        # The run dies; its job is due again when its lease ends (0: re-run at once).
        self.faults += 1
        self.crash_delay_total += delay
        self.clock_ms += int(delay * 1000)


# Weighted towards the answers that lead to a publish.
STATUS_ANSWERS = [
    "IN_PROGRESS",
    "FINISHED",
    "IN_PROGRESS",
    "FINISHED",
    "FINISHED",
    "ERROR",
    "EXPIRED",
    "PUBLISHED",
    "transient",
    "throttled",
    "not_found",
]
PUBLISH_ANSWERS = [
    "media_id",
    "not_ready",
    "timeout",
    "5xx",
    "4xx",
    "code10",
    "refused",
    "throttled",
]


def status_answer(label: str, *, published: bool) -> ContainerStatus | ThreadsError:
    if label == "transient":
        return GraphAPIError("try again", code=2, is_transient=True, http_status=503)
    if label == "throttled":
        return throttled_error()
    if label == "not_found":
        return not_found()
    if published and label in ("IN_PROGRESS", "FINISHED"):
        return cs(State.PUBLISHED)  # the server knows what it did
    return cs(label, "UNKNOWN" if label == "ERROR" else None)


def publish_answer(label: str) -> str | ThreadsError:
    answers: Mapping[str, str | ThreadsError] = {
        "media_id": "18000000000000001",
        "not_ready": GraphAPIError("not ready", code=24, subcode=4279009, http_status=400),
        "timeout": RequestTimeoutError("publish timed out"),
        "5xx": GraphAPIError("oops", code=1, http_status=500),
        "4xx": GraphAPIError("bad", code=200, http_status=400),
        # Code 10 at publish has come back for posts that went out: ambiguous.
        "code10": GraphAPIError("no permission", code=10, http_status=400),
        "refused": NetworkError("connection refused", request_sent=False),
        "throttled": GraphAPIError("limit", code=4, http_status=400),
    }
    return answers[label]


def time_bound(policy: Policy, w: World, final: PollResult) -> float:
    """When a poll is final at the latest.

    Polling (checks, throttle deferrals, the checks after an ambiguous publish) never runs past
    the window's end D = deadline_at + min(window_delay, max_delay) plus the slack: no check is
    scheduled later, and a run that comes later times out. The publish, started by FINISHED
    (seen by then), waits the grace, then makes at most ``publish_max_attempts`` calls (each
    claim counts one), each followed by a wait of the grace (not ready) or an interval (retry
    later) before the next claim, the last of which may only find the attempts used up. What
    the window does not cover: a due publish waits for its account's pauses (not capped by
    max_delay), a crashed run is re-run when its lease ends, and each run starts a tick after
    the last.
    """
    s = policy.schedule
    ticks = w.runs * RUN_TICK_MS / 1000
    extra = w.pause_total + w.crash_delay_total + ticks + 1e-3
    if final.is_carousel and final.children_ready_at is None:
        # A parent whose children never all became FINISHED is never polled: it ends when one
        # fails, or at the latest when the children's window (and its slack) is over.
        return children_deadline(final, policy) + extra
    deadline = (final.deadline_at or 0.0) + min(final.window_delay, policy.max_delay)
    publish = 0.0
    if final.publish:
        # The first claim waits the grace (a reply's settle time) and the minimum age; each
        # attempt but the last is followed by its back-off (not ready) or an interval (retry
        # later), the last by an interval before the claim that finds the attempts used up.
        settle = max(policy.publish_grace, policy.reply_settle if final.reply_to else 0.0)
        publish = settle + policy.publish_min_age + max(s.interval, 0.05)
        for k in range(1, policy.publish_max_attempts):
            publish += max(not_ready_backoff(policy, k), s.interval, 0.05)
        # A throttled answer spends no attempt: it waits the account's pause (in pause_total)
        # and at least the grace before the next claim.
        publish += w.throttled_publishes * max(policy.publish_grace, 0.05)
    return deadline + s.slack + publish + extra


def test_the_time_bound_is_reached_by_a_publish_retried_at_the_window_end() -> None:
    # FINISHED at the last moment of the window, then every publish attempt answered "retry
    # later" (connection refused): the poll ends exactly at the bound, an interval per attempt
    # after the grace (more than grace * attempts + interval).
    w = World(h=hash_of(poll(publish=True, status=State.IN_PROGRESS, checks=5)), clock_ms=0)
    w.h["next_check_at"] = stamp(DEADLINE + SLACK)
    refused = NetworkError("connection refused", request_sent=False)
    while w.h.get("final") != "1":
        now = float(w.h["next_check_at"])
        w.clock_ms = round(now * 1000)
        r = load(w.h)
        p = plan(r, now)
        if isinstance(p, CallStatus):
            rec = status_record(r, cs(State.FINISHED), now)
        else:
            assert isinstance(p, CallPublish)
            claim = claim_publish(w.h, now_ms=w.clock_ms, max_attempts=3)
            if claim == "ok":
                rec = after_publish(
                    r, judge_publish(refused), media_id=None, error=refused, now=now, policy=POLICY
                )
            else:
                not_claimed = publish_not_claimed(claim, POLICY)
                assert isinstance(not_claimed, Record)
                rec = not_claimed
        assert write_record(w.h, r, rec, now_ms=w.clock_ms, checked_at=now)
    final = load(w.h)
    assert final.status == State.PUBLISH_FAILED and final.publish_attempts == 3
    assert final.finalized_at == pytest.approx(DEADLINE + SLACK + 0.5 + 3 * 1.0)
    assert final.finalized_at == pytest.approx(time_bound(POLICY, w, final) - 1e-3)


def maybe_pause(data: st.DataObject, w: World, at: float) -> None:
    """Sometimes the account gets (or extends) a pause (another container was throttled)."""
    if w.pauses >= MAX_PAUSES:
        return
    length = data.draw(st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.5, 2.0, 7.0]), label="pause")
    if length:
        w.pauses += 1
        w.pause_total += length
        w.throttled_until = max(w.throttled_until, float(stamp(at + length)))


def crash_point(data: st.DataObject, w: World, points: list[str]) -> str:
    if w.faults >= MAX_FAULTS:
        return "none"
    return data.draw(st.sampled_from(["none", "none", "none", *points]), label="crash")


def crash_delay(data: st.DataObject) -> float:
    return data.draw(st.sampled_from([0.0, 2.0]), label="lease")


def run_once(data: st.DataObject, w: World, policy: Policy) -> None:
    """One run of the poll's job, from the claim to the record (or a crash)."""
    h = w.h
    due_ms = round(float(h["next_check_at"]) * 1000)
    early = (
        w.faults < MAX_FAULTS
        and due_ms > w.clock_ms
        and data.draw(st.sampled_from([False, False, False, True]), label="early wake-up")
    )
    if early:
        # A re-run whose re-schedule was lost: the job runs before it is due.
        w.faults += 1
    else:
        w.clock_ms = max(w.clock_ms, due_ms)
    w.clock_ms += RUN_TICK_MS
    w.runs += 1
    now = w.now
    maybe_pause(data, w, now)
    current = load(h)
    token = data.draw(
        st.sampled_from([TokenState.OK] * 40 + [TokenState.MISSING, TokenState.REJECTED]),
        label="token",
    )
    p = plan_run(current, throttled_until=w.throttled_until, token=token, now=now, policy=policy)
    phase = phase_of(current)
    if early and (current.next_check_at or 0) - now > EARLY_TOLERANCE_SECONDS:
        # An early run never calls the API.
        assert isinstance(p, Record), p
        assert not p.decision.touch or phase is Phase.PUBLISH_IN_FLIGHT

    if isinstance(p, Skip):
        # A live poll is never skipped (a final one is not run here); if it were, its job
        # would be released and planned again a second later (CheckJob._end).
        w.clock_ms += 1000
        return
    if isinstance(p, Record):
        if crash_point(data, w, ["before record"]) != "none":
            w.crash(crash_delay(data))
            return
        assert write_record(h, current, p, now_ms=w.clock_ms, checked_at=None)
        return
    if isinstance(p, CallStatus):
        # (d) a carousel's parent is never polled before every child is FINISHED.
        assert not (current.is_carousel and current.children_ready_at is None), current
        assert not w.children_left and w.child_failure is None
        # No check past the window: a late run (after a crash) times out without calling.
        s = policy.schedule
        if current.checks > 0:
            end = (current.deadline_at or 0.0) + min(current.window_delay, policy.max_delay)
            assert now <= end + s.slack and current.checks < s.max_checks, (now, current)
        point = crash_point(data, w, ["before call", "after call"])
        if point == "before call":
            w.crash(crash_delay(data))
            return
        labels = [a for a in STATUS_ANSWERS if w.pauses < MAX_PAUSES or a != "throttled"]
        label = data.draw(st.sampled_from(labels), label="status answer")
        outcome = status_answer(label, published=w.published_on_server)
        w.status_calls += 1
        paused_until = 0.0
        if label == "throttled":
            # account.lua notes the pause before the record: it stays even if the run dies.
            w.pauses += 1
            length = data.draw(st.sampled_from([0.5, 2.0, 7.0]), label="throttle pause")
            w.pause_total += length
            w.throttled_until = max(w.throttled_until, float(stamp(now + length)))
            paused_until = w.throttled_until
        if point == "after call":
            w.crash(crash_delay(data))
            return
        rec = after_status(current, outcome, now=now, paused_until=paused_until, policy=policy)
        assert write_record(h, current, rec, now_ms=w.clock_ms, checked_at=now)
        return

    assert isinstance(p, CallPublish), p
    # Only a due publish is planned (publish_claim.lua would refuse any other, below).
    assert phase is Phase.PUBLISH_DUE
    point = crash_point(data, w, ["before claim", "after claim", "after publish call"])
    if point == "before claim":
        w.crash(crash_delay(data))
        return
    # (e) no publish before the grace (a reply: its settle time) and the minimum age.
    settle = max(policy.publish_grace, policy.reply_settle if current.reply_to else 0.0)
    assert current.finished_at is not None and current.enqueued_at is not None
    earliest = max(current.finished_at + settle, current.enqueued_at + policy.publish_min_age)
    assert now >= earliest - EARLY_TOLERANCE_SECONDS - 2e-3, (now, earliest)
    used_up = data.draw(st.sampled_from([None] * 8 + ["post", "reply"]), label="quota used up")
    limit = PublishingLimit(
        quota_usage=250 if used_up == "post" else 3,
        config=QuotaConfig(quota_total=250),
        reply_quota_usage=1000 if used_up == "reply" else 5,
        reply_config=QuotaConfig(quota_total=1000),
    )
    quota, stop = publish_quota(current, limit)
    if stop is not None:
        w.quota_exhausted = used_up
        assert write_record(h, current, stop, now_ms=w.clock_ms, checked_at=None)
        return
    claim = claim_publish(h, now_ms=w.clock_ms, max_attempts=policy.publish_max_attempts)
    if claim != "ok":
        not_claimed = publish_not_claimed(claim, policy)
        if isinstance(not_claimed, Record):
            assert write_record(h, current, not_claimed, now_ms=w.clock_ms, checked_at=None)
        # A Skip (the claim is held): the job is released, due again at once.
        return
    if point == "after claim":
        w.crash(crash_delay(data))
        return
    # (a): the server never sees a publish of a container after one that may have published it.
    assert not w.maybe_published, "a second publish call after a published/ambiguous one"
    assert not w.published_on_server
    w.publish_calls += 1
    label = data.draw(st.sampled_from(PUBLISH_ANSWERS), label="publish answer")
    if label == "throttled":
        w.throttled_publishes += 1
    answer = publish_answer(label)
    verdict = judge_publish(answer)
    if label == "media_id":
        w.published_on_server = True
    if verdict in (PublishVerdict.PUBLISHED, PublishVerdict.UNCONFIRMED):
        w.maybe_published = True
        if verdict is PublishVerdict.UNCONFIRMED and data.draw(st.booleans(), label="it went"):
            w.published_on_server = True
    if point == "after publish call":
        w.crash(crash_delay(data))
        return
    rec = after_publish(
        current,
        verdict,
        media_id=answer if isinstance(answer, str) else None,
        error=answer if isinstance(answer, ThreadsError) else None,
        now=now,
        policy=policy,
    )
    rec = Record(rec.decision, quota.merged(rec.changes))
    assert write_record(h, current, rec, now_ms=w.clock_ms, checked_at=None)


def maybe_child_ends(data: st.DataObject, w: World, policy: Policy) -> bool:
    """Sometimes one of a carousel's children ends its own poll before the parent's job runs
    (its record writes into the parent: ``child_ended``). True when one did."""
    offset_ms = data.draw(
        st.sampled_from([0, 300, 1500, 4000, 0, 300, None]), label="child ends in"
    )
    if offset_ms is None:
        return False
    at = w.clock_ms + offset_ms
    due = round(float(w.h["next_check_at"]) * 1000)
    # A child's poll ends within its window (the parent's until they are ready) or not at all.
    child_end = float(w.h["deadline_at"]) + policy.max_delay + policy.schedule.slack
    if at > due or at / 1000 > child_end:
        return False
    w.clock_ms = at
    i = data.draw(st.integers(0, len(w.children_left) - 1), label="which child")
    child = w.children_left.pop(i)
    status = data.draw(
        st.sampled_from([State.FINISHED] * 5 + [State.ERROR, State.EXPIRED, State.TIMED_OUT]),
        label="child's final status",
    )
    error = "FAILED_DOWNLOADING_VIDEO" if status == State.ERROR else ""
    if status != State.FINISHED and w.child_failure is None:
        w.child_failure = (child, status, error)
    child_ended(w.h, child, status, error, now_ms=at)
    return True


policies = st.builds(
    Policy,
    schedule=st.builds(
        Schedule,
        interval=st.sampled_from([1.0, 3.0]),
        window=st.sampled_from([5.0, 0.0, 12.0]),
    ),
    max_delay=st.sampled_from([10.0, 0.0, 3.0]),
    publish_grace=st.sampled_from([0.5, 2.0, 5.0]),
    publish_max_attempts=st.sampled_from([3, 1]),
    publish_min_age=st.sampled_from([0.0, 0.0, 3.0, 8.0]),
    reply_settle=st.sampled_from([0.0, 4.0]),
)
KINDS = ["post", "post", "reply", "carousel", "carousel"]


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    publish=st.sampled_from([True, True, True, False]),
    kind=st.sampled_from(KINDS),
    data=st.data(),
)
def test_a_poll_is_published_at_most_once_and_always_ends(
    policy: Policy, publish: bool, kind: str, data: st.DataObject
) -> None:
    """Posts, replies and carousels (whose children end at random times, in any state)."""
    start_ms = int(T0 * 1000)
    window_ms = round(policy.schedule.window * 1000)
    h = {
        "container_id": "1",
        "status": State.QUEUED,
        "final": "0",
        "enqueued_at": ms_stamp(start_ms),
        "deadline_at": ms_stamp(start_ms + window_ms),
        "generation": "g1",
        "next_check_at": ms_stamp(start_ms),
    }
    if publish:
        h["publish"] = "1"
    w = World(h=h, clock_ms=start_ms)
    if kind == "reply":
        h["reply_to"] = "555"
    if kind == "carousel":
        # As enqueue.lua writes a carousel's parent: its job waits for its children.
        children = [str(11 + i) for i in range(data.draw(st.integers(2, 4), label="children"))]
        h.update(
            children=",".join(children),
            children_pending=str(len(children)),
            next_check_at=h["deadline_at"],
        )
        w.children_left = list(children)

    while h.get("final") != "1" and w.runs < MAX_RUNS:
        if w.children_left and maybe_child_ends(data, w, policy):
            continue
        run_once(data, w, policy)

    # (b) it ends, within a bounded number of runs and by a bounded time.
    final = load(h)
    assert final.final, f"not final after {w.runs} runs: {h}"
    assert final.finalized_at is not None
    assert final.finalized_at <= time_bound(policy, w, final), (final, w)
    # What a final state says about publishing is true, and it says it is over.
    assert final.publish_status not in (PublishStatus.PENDING, PublishStatus.IN_FLIGHT)
    # FINISHED starts an opted-in publish, and then only the publish's outcome ends the poll.
    assert not (final.publish and final.status == State.FINISHED)
    if final.publish_status == PublishStatus.PUBLISHED:
        assert w.published_on_server
    if final.status in (State.PUBLISH_FAILED, State.QUOTA_EXHAUSTED, State.NEEDS_RECREATE):
        assert not w.maybe_published
    if final.status == State.PUBLISH_UNCONFIRMED:
        # Only after a claim whose call may have gone out (answered ambiguously, or its run died).
        assert final.publish_attempts >= 1 and final.publish_status == PublishStatus.UNCONFIRMED
    if final.status == State.QUOTA_EXHAUSTED:
        # The quota that stopped it is the one it spends.
        assert w.quota_exhausted == ("reply" if kind == "reply" else "post")
    assert w.publish_calls - w.throttled_publishes <= policy.publish_max_attempts
    assert final.checks <= policy.schedule.max_checks
    if kind == "reply":
        assert final.reply_to == "555"
    if kind == "carousel" and final.children_ready_at is None:
        # Never polled; a failed child ends it naming the child and its error_message.
        assert w.status_calls == 0 and w.publish_calls == 0
        if w.child_failure is not None:
            child, status, error = w.child_failure
            assert final.status == State.CHILD_FAILED, final
            assert (final.failed_child, final.failed_child_status) == (child, status)
            assert (final.error_message or "") == error
            assert final.last_error is not None and child in final.last_error
        else:
            assert final.status == State.TIMED_OUT
    # (c) a poll that stopped without a final answer always says why.
    if final.status in (
        State.TIMED_OUT,
        State.PUBLISH_UNCONFIRMED,
        State.NEEDS_RECREATE,
        State.CHILD_FAILED,
    ):
        assert final.last_error, h
    event(f"{kind}: final {final.status}, publish_status {final.publish_status}")
    event(f"{w.publish_calls} publish calls, {w.faults} faults, {w.pauses} pauses")

    # (c) a final state is never changed: any later run is skipped, and a record is refused.
    before = dict(h)
    for later in (0.0, 1.0, 1000.0):
        for token in TokenState:
            for paused in (0.0, final.finalized_at + 500):
                p = plan_run(
                    final,
                    throttled_until=paused,
                    token=token,
                    now=final.finalized_at + later,
                    policy=policy,
                )
                assert isinstance(p, Skip)
    stray = after_status(final, cs(State.IN_PROGRESS), now=w.now, paused_until=0.0, policy=policy)
    assert not write_record(h, final, stray, now_ms=w.clock_ms + 1, checked_at=w.now)
    assert claim_publish(h, now_ms=w.clock_ms, max_attempts=policy.publish_max_attempts) == "stale"
    child_ended(h, "99", State.ERROR, "UNKNOWN", now_ms=w.clock_ms + 1)
    assert h == before


def test_changes_become_hash_strings_in_one_time_format() -> None:
    c = Changes(
        publish_status=PublishStatus.PUBLISHED,
        media_id="m1",
        published_at=T0 + 1.23456,
        finished_at=T0,
        quota_usage=3,
        quota_total=250,
    )
    assert c.hash_fields() == {
        "publish_status": "published",
        "media_id": "m1",
        "published_at": stamp(T0 + 1.23456),
        "finished_at": stamp(T0),
        "quota_usage": "3",
        "quota_total": "250",
    }
    assert c.hash_fields()["published_at"] == f"{int(T0) + 1}.234"


def test_changes_clear_and_leave_alone() -> None:
    assert Changes().hash_fields() == {} and not Changes()
    assert Changes(strikes=CLEAR).hash_fields() == {"strikes": ""} and Changes(strikes=CLEAR)
    assert Changes(strikes=2).hash_fields() == {"strikes": "2"}


def test_changes_merge_later_wins_where_set() -> None:
    quota = Changes(quota_usage=250, quota_total=250, publish_status=PublishStatus.PENDING)
    merged = quota.merged(Changes(publish_status=PublishStatus.QUOTA_EXHAUSTED))
    assert merged == Changes(
        quota_usage=250, quota_total=250, publish_status=PublishStatus.QUOTA_EXHAUSTED
    )
    assert Changes(media_id="a").merged(Changes()) == Changes(media_id="a")
