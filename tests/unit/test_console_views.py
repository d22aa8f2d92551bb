"""Issue 23: the console's pure view logic: the filters of /containers, the links that keep
them across pages, the targets of an action, the key's name, a result's fields and failure
reason, the chart's axes, and the templates' card/table rendering."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from worker.core.result import PollResult
from worker.ops.stats import MinuteStats
from worker.web.access import ApiKey, Role, Verdict
from worker.web.chart import LEFT, chart
from worker.web.console import templates
from worker.web.errors import ApiError
from worker.web.pages import (
    BULK_MAX,
    ListFilter,
    Target,
    actor_name,
    clean_reason_field,
    failure_reason,
    parse_filter,
    parse_targets,
    result_fields,
)


def test_filters_parse_and_round_trip() -> None:
    f = parse_filter({"status": "failures", "account": " 123 ", "since": "2h", "until": "1h"})
    assert (f.failed_only, f.account, f.since_seconds, f.until_seconds) == (
        True,
        "123",
        7200.0,
        3600.0,
    )
    assert parse_filter(dict(re.findall(r"(\w+)=([^&]*)", f.query()))) == f
    # Empty form fields are absent; the defaults leave the link short.
    blank = parse_filter({"status": "", "account": "", "since": "", "until": "", "cursor": ""})
    assert blank == ListFilter() and ListFilter().query() == ""
    assert parse_filter({"status": "ERROR"}).statuses == frozenset({"ERROR"})
    assert parse_filter({"status": "inflight"}).inflight
    assert parse_filter({"account": "default"}).account == "default"


@pytest.mark.parametrize(
    "query",
    [
        {"status": "NOPE"},
        {"status": "ERROR,EXPIRED"},  # the page takes one state (the API a list)
        {"account": "12a"},
        {"since": "yesterday"},
        {"until": "0s"},
        {"limit": "0"},
        {"limit": str(BULK_MAX + 1)},
        {"cursor": "x" * 81},
    ],
)
def test_bad_filters_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(ApiError) as exc:
        parse_filter(query)
    assert exc.value.status == 400


def test_pagination_cursor_is_kept_with_the_filters() -> None:
    f = parse_filter({"status": "inflight", "account": "7", "limit": "2"})
    link = f.query(cursor="1795438388.610:23001")
    assert link == "status=inflight&account=7&limit=2&cursor=1795438388.610%3A23001"
    assert parse_filter(dict(p.split("=") for p in link.replace("%3A", ":").split("&"))).cursor


def test_targets_are_checked_deduplicated_and_bounded() -> None:
    assert parse_targets("cancel", ["1", " 2", "1"]) == [
        Target("container", "1"),
        Target("container", "2"),
    ]
    letters = parse_targets("replay", ["intake:1-0", "webhooks:2-1"])
    assert [t.value for t in letters] == ["intake:1-0", "webhooks:2-1"]
    for action, bad in (
        ("cancel", ["x1"]),
        ("replay", ["1-0"]),
        ("replay", ["other:1-0"]),
        ("cancel", []),
        ("poll", [str(i) for i in range(1, BULK_MAX + 2)]),
    ):
        with pytest.raises(ApiError):
            parse_targets(action, bad)


def test_the_key_is_named_never_shown() -> None:
    key = ApiKey.of("a-secret-key-0123456789", Role.WRITE)
    name = actor_name(Verdict(True, key=key, via="session"))
    assert name == f"key {key.fingerprint}" and "secret" not in name
    assert actor_name(Verdict(True, via="open")) == "open access (no API key)"
    with pytest.raises(ApiError):
        clean_reason_field("   ", maximum=200)
    assert clean_reason_field(" wrong\n video ", maximum=200) == "wrong video"


def _result(**more: object) -> PollResult:
    return PollResult.from_hash(
        {
            "container_id": "5",
            "status": "ERROR",
            "final": "1",
            "error_message": "FAILED_DOWNLOADING_VIDEO",
            "last_error_code": "100",
            "last_error_fbtrace_id": "AbC",
            "enqueued_at": "1795438388.610",
            "generation": "g",
            **{k: str(v) for k, v in more.items()},
        }
    )


def test_fields_and_failure_reason() -> None:
    r = _result()
    fields = {f.name: f for f in result_fields({"enqueued_at": 1795438388.61, "x_id": "7"})}
    assert fields["enqueued_at"].value.endswith("Z") and fields["enqueued_at"].kind == "time"
    assert fields["x_id"].kind == "code"
    why = failure_reason(r)
    assert why is not None and why.headline == "FAILED_DOWNLOADING_VIDEO"
    assert ("Graph code", "100") in why.codes and ("fbtrace_id", "AbC") in why.codes
    assert failure_reason(_result(status="FINISHED", error_message="")) is None


def test_chart_has_axes_times_and_units() -> None:
    minutes = [MinuteStats(minute=600 + i, checks=i) for i in range(60)]
    c = chart(minutes)
    assert [t.text for t in c.xticks] == ["10:00", "10:15", "10:30", "10:45"]
    assert all(t.x > LEFT for t in c.xticks)
    assert {t.text for t in c.yticks} >= {"0", "59"}
    assert [a.text for a in c.axes] == ["checks per minute", "final states per minute"]
    assert all(b.x >= LEFT for b in c.bars)


def test_tables_render_as_cards_with_labels() -> None:
    env = templates()
    page = env.get_template("done.html").render(
        prefix="",
        csrf="",
        login=True,
        can_write=True,
        q="",
        here="/console/act",
        bulk_max=BULK_MAX,
        action="cancel",
        label="Cancel",
        outcomes=[],
        done=0,
        reason="r",
        actor="key x",
        back="/",
    )
    assert 'class="cards"' in page and 'href="#main"' in page and "<script" not in page
    css = resources.files("worker.web").joinpath("static", "console.css").read_text()
    assert "table.cards td[data-label]::before" in css and "prefers-color-scheme: dark" in css


def test_timeline_rows_mark_what_went_wrong() -> None:
    from worker.core.history import EventKind, HistoryEvent
    from worker.web.pages import timeline

    events = [
        HistoryEvent(EventKind.ENQUEUED, 1.0, outcome="enqueued"),
        HistoryEvent(EventKind.CHECK, 61.0, status="IN_PROGRESS", latency_ms=120),
        HistoryEvent(
            EventKind.CHECK,
            121.0,
            latency_ms=80,
            error_kind="permission",
            error_code=10,
            fbtrace_id="AbC",
        ),
        HistoryEvent(EventKind.WEBHOOK, 122.0, outcome="retry", attempt=1),
        HistoryEvent(EventKind.WEBHOOK, 123.0, outcome="dead", attempt=5),
        HistoryEvent(EventKind.PUBLISH, 124.0, outcome="unconfirmed"),
        HistoryEvent(EventKind.FINAL, 125.0, status="ERROR", checks=2),
        HistoryEvent(EventKind.FINAL, 126.0, status="FINISHED", checks=2),
    ]
    rows = timeline(events)
    assert [r.kind for r in rows] == [e.kind.value for e in events]
    assert [r.bad for r in rows] == [False, False, True, False, True, True, True, False]
    assert "code 10" in rows[2].summary and "fbtrace_id AbC" in rows[2].summary
    assert rows[1].summary.startswith("IN_PROGRESS") and "120 ms" in rows[1].summary
