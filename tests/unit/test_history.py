"""worker.core.history: the entries a record hands its script, and their reading back. Pure."""

from __future__ import annotations

from worker.core.decisions import Decision
from worker.core.errors import Failure
from worker.core.history import (
    EventKind,
    HistoryEvent,
    cancel_entry,
    checks_of_last_poll,
    describe,
    parse_entry,
    parse_history,
    record_entries,
    webhook_entry,
)

T = 1795438388610  # Redis ms
B36 = "mwt9nr0i"  # T in base 36, as lib.lua writes it


def stamped(payload: str) -> str:
    """What lib.lua's history() makes of a payload: the time after the kind's letter."""
    assert int(B36, 36) == T
    return payload[0] + B36 + payload[1:]


def one(payload: str) -> HistoryEvent:
    event = parse_entry(stamped(payload))
    assert event is not None
    return event


PERMISSION = Failure("permission", "no", code=10, subcode=None, fbtrace_id="AbC_d-1")


def test_a_plain_check_is_short_and_reads_back() -> None:
    d = Decision("IN_PROGRESS", False, 1.0, last_api_status="IN_PROGRESS", checks=1)
    (entry,) = record_entries(d, call="status", latency_ms=123, checks=1)
    assert entry == "c|P|123"
    assert one(entry) == HistoryEvent(
        EventKind.CHECK, T / 1000, status="IN_PROGRESS", latency_ms=123
    )


def test_an_error_check_keeps_kind_code_subcode_and_fbtrace() -> None:
    d = Decision("FAILED", True, None, error=PERMISSION, checks=2)
    check, final = record_entries(d, call="status", latency_ms=40, checks=2)
    e = one(check)
    assert (e.status, e.latency_ms, e.error_kind, e.error_code, e.error_subcode, e.fbtrace_id) == (
        "",
        40,
        "permission",
        10,
        None,
        "AbC_d-1",
    )
    f = one(final)
    assert (f.kind, f.status, f.checks) == (EventKind.FINAL, "FAILED", 2)


def test_a_throttled_answer_is_a_pause_not_a_check() -> None:
    err = Failure("throttled", "slow down", code=613)
    d = Decision("IN_PROGRESS", False, 5.0, error=err, spent=False, delay_added=2.5)
    (entry,) = record_entries(d, call="status", latency_ms=7, checks=1)
    e = one(entry)
    assert (e.kind, e.wait_ms, e.latency_ms, e.error_code) == (EventKind.THROTTLED, 2500, 7, 613)
    # A deferral with no call (the account was already paused): the pause alone.
    (entry,) = record_entries(d, checks=1)
    assert one(entry) == HistoryEvent(EventKind.THROTTLED, T / 1000, wait_ms=2500)


def test_publish_answer_and_nothing_for_an_untouched_record() -> None:
    d = Decision("PUBLISHED", True, None, last_api_status="FINISHED")
    answer, final = record_entries(
        d, call="publish", latency_ms=88, verdict="published", media_id="1789", checks=3
    )
    p = one(answer)
    assert (p.kind, p.outcome, p.latency_ms, p.media_id) == (
        EventKind.PUBLISH,
        "published",
        88,
        "1789",
    )
    assert (one(final).status, one(final).checks) == ("PUBLISHED", 3)
    assert record_entries(Decision("QUEUED", False, 1.0, touch=False), checks=0) == []


def test_free_text_is_one_field_without_newlines_and_may_hold_the_separator() -> None:
    entry = webhook_entry("retry", 2, "HTTP 500 |from\nthe receiver")
    e = one(entry)
    assert (e.kind, e.outcome, e.attempt, e.detail) == (
        EventKind.WEBHOOK,
        "retry",
        2,
        "HTTP 500 |from the receiver",
    )
    long = cancel_entry("x" * 500)
    assert len(long) < 130 and one(long).detail == "x" * 120


def test_a_history_reads_in_order_and_skips_what_it_cannot_read() -> None:
    raw = "\n".join(
        [
            stamped("q"),
            stamped("c|P|5"),
            "z123|future kind",
            "c!!|P",
            stamped("w|250"),
            stamped("q|r"),
        ]
    )
    events = parse_history(raw.encode())
    assert [e.kind for e in events] == [
        EventKind.ENQUEUED,
        EventKind.CHECK,
        EventKind.PACED,
        EventKind.ENQUEUED,
    ]
    assert events[2].wait_ms == 250 and events[3].outcome == "restarted"
    assert parse_history(None) == [] and parse_history(b"") == []
    assert checks_of_last_poll(events) == 0 and checks_of_last_poll(events[:3]) == 1


def test_child_and_unknown_statuses_read_back_verbatim() -> None:
    e = one("k|1234|CHILD_FAILED")
    assert (e.kind, e.detail, e.status) == (EventKind.CHILD, "1234", "CHILD_FAILED")
    assert one("f|F|1").status == "FINISHED"


def test_as_dict_and_describe_show_every_field_it_has() -> None:
    d = Decision("FAILED", True, None, error=PERMISSION, checks=1)
    e = one(record_entries(d, call="status", latency_ms=40, checks=1)[0])
    assert e.as_dict() == {
        "kind": "check",
        "at": T / 1000,
        "status": "",
        "latency_ms": 40,
        "error_kind": "permission",
        "error_code": 10,
        "fbtrace_id": "AbC_d-1",
    }
    text = describe(e)
    assert "40 ms" in text and "code 10" in text and "AbC_d-1" in text and "permission" in text
