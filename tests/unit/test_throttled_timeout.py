"""A throttled answer that ends the window is not a check (found by the lifecycle model,
session 9: the history held one check entry more than the poll's ``checks``). Pure."""

from __future__ import annotations

from api_client import GraphAPIError
from worker.core.decisions import Schedule, decide_throttled
from worker.core.history import record_entries


def test_a_throttled_answer_that_ends_the_window_is_recorded_as_throttled() -> None:
    err = GraphAPIError("Application request limit reached", code=4, http_status=400)
    decision = decide_throttled(
        Schedule(60.0, 300.0),
        now=1000.0,
        paused_until=2000.0,  # far past the window's end and what throttling may add
        deadline=1010.0,
        window_delay=0.0,
        max_delay=30.0,
        previous_status="IN_PROGRESS",
        previous_error_message=None,
        error=err,
    )
    assert decision.final and decision.status == "TIMED_OUT"
    assert not decision.spent and decision.checks is None
    entries = record_entries(decision, call="status", latency_ms=12, checks=4)
    # A throttled entry and the final one: no check entry that `checks` (4) would not count.
    assert [e[0] for e in entries] == ["t", "f"]
    assert entries[-1].endswith("|4")
