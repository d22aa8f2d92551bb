"""The pure schedule and state logic, without Redis or a network."""

from __future__ import annotations

import pytest

from api_client.errors import (
    GraphAPIError,
    MalformedResponseError,
    NetworkError,
    RequestTimeoutError,
    ThreadsError,
)
from api_client.models import ContainerStatus
from worker.core.decisions import (
    EARLY_TOLERANCE_SECONDS,
    Schedule,
    decide,
    next_check_at,
    wait_before_check,
    window_closed,
)
from worker.core.errors import failure_of
from worker.core.states import State

META = Schedule(interval=60.0, window=300.0)


def status(value: str, msg: str | None = None) -> ContainerStatus:
    return ContainerStatus("1", value, msg)


def test_meta_schedule_allows_six_checks() -> None:
    assert META.max_checks == 6
    assert Schedule(0.2, 1.0).max_checks == 6
    assert Schedule(60, 0).max_checks == 1


def test_on_time_checks_follow_each_other_one_interval_apart() -> None:
    enq = 1000.0
    deadline = enq + 300
    t = enq
    times = [t]
    checks = 1
    while (nxt := next_check_at(META, checks_made=checks, deadline=deadline, now=t)) is not None:
        assert nxt - t == pytest.approx(60.0)
        t = nxt + 0.01  # a little scheduling jitter
        times.append(t)
        checks += 1
    assert len(times) == 6
    assert times[-1] - enq <= 300 + META.slack


def test_no_check_is_scheduled_past_the_deadline() -> None:
    # A worker outage delayed the 4th check to t=250: the next one would be at 310 > 300 + 5.
    assert next_check_at(META, checks_made=4, deadline=300.0, now=250.0) is None
    assert next_check_at(META, checks_made=4, deadline=300.0, now=244.0) == 304.0


def test_check_count_is_capped_even_with_time_left() -> None:
    assert next_check_at(META, checks_made=6, deadline=10_000.0, now=0.0) is None


def test_first_check_always_runs_even_when_late() -> None:
    assert not window_closed(META, checks_made=0, deadline=300.0, now=10_000.0)
    assert window_closed(META, checks_made=1, deadline=300.0, now=306.0)
    assert not window_closed(META, checks_made=1, deadline=300.0, now=304.0)


@pytest.mark.parametrize("final", ["FINISHED", "PUBLISHED", "EXPIRED", "ERROR"])
def test_api_final_states_end_the_poll(final: str) -> None:
    d = decide(META, status(final), checks_made=1, deadline=300, now=0, previous_status="QUEUED")
    assert d.final and d.status == final and d.next_check_at is None


def test_error_keeps_error_message_verbatim() -> None:
    d = decide(
        META,
        status("ERROR", "SOME_NEW_REASON"),
        checks_made=2,
        deadline=300,
        now=60,
        previous_status="IN_PROGRESS",
    )
    assert (d.status, d.error_message, d.final) == ("ERROR", "SOME_NEW_REASON", True)


def test_in_progress_schedules_the_next_check() -> None:
    d = decide(
        META, status("IN_PROGRESS"), checks_made=1, deadline=300, now=0.5, previous_status="QUEUED"
    )
    assert not d.final and d.status == "IN_PROGRESS" and d.next_check_at == 60.5


def test_unknown_status_is_kept_and_not_final() -> None:
    d = decide(
        META, status("SCHEDULED"), checks_made=1, deadline=300, now=0, previous_status="QUEUED"
    )
    assert not d.final and d.status == "SCHEDULED"


def test_in_progress_at_the_last_check_times_out_keeping_last_status() -> None:
    d = decide(
        META,
        status("IN_PROGRESS"),
        checks_made=6,
        deadline=300,
        now=300,
        previous_status="IN_PROGRESS",
    )
    assert d.final and d.status == State.TIMED_OUT and d.last_api_status == "IN_PROGRESS"


@pytest.mark.parametrize(
    "error",
    [
        NetworkError("connection refused"),
        RequestTimeoutError("timeout"),
        MalformedResponseError("not json", http_status=200),
        MalformedResponseError("html", http_status=502),
        GraphAPIError("unknown", code=1, http_status=500),
        GraphAPIError("temp", code=2, is_transient=True, http_status=503),
        GraphAPIError("limit", code=4, is_transient=True, http_status=400),
        GraphAPIError("limit", code=613, http_status=400),
        GraphAPIError("odd", code=9999, http_status=400),
    ],
)
def test_transient_failures_never_produce_a_final_api_state(error: ThreadsError) -> None:
    d = decide(
        META,
        error,
        checks_made=2,
        deadline=300,
        now=60,
        previous_status="IN_PROGRESS",
    )
    assert not d.final and d.status == "IN_PROGRESS" and d.error == failure_of(error)
    # ...and on the last check, only TIMED_OUT, with the error kept.
    last = decide(
        META,
        error,
        checks_made=6,
        deadline=300,
        now=300,
        previous_status="IN_PROGRESS",
    )
    assert last.final and last.status == State.TIMED_OUT and last.error == failure_of(error)


@pytest.mark.parametrize(
    ("code", "subcode", "kind"),
    [
        (100, 33, "not_found"),
        (190, 463, "token"),
        (102, None, "token"),
        (10, None, "permission"),
        (200, None, "permission"),
        (100, None, "invalid_request"),
    ],
)
def test_uncheckable_containers_fail_with_the_graph_code(
    code: int, subcode: int | None, kind: str
) -> None:
    err = GraphAPIError("nope", code=code, subcode=subcode, fbtrace_id="Abc", http_status=400)
    d = decide(META, err, checks_made=1, deadline=300, now=0, previous_status="QUEUED")
    assert d.final and d.status == State.FAILED and d.error_kind == kind
    assert d.error == failure_of(err)


def test_wait_before_check() -> None:
    # Due, or within the tolerance of arq's ms scores: run now.
    assert wait_before_check(None, now=100.0) == 0.0
    assert wait_before_check(99.0, now=100.0) == 0.0
    assert wait_before_check(100.0 + EARLY_TOLERANCE_SECONDS, now=100.0) == 0.0
    # Early (a re-run of a job whose re-schedule was lost): wait the rest.
    assert wait_before_check(160.0, now=100.0) == 60.0
