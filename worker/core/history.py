"""A container's history (README, "History"): the compact entries the Lua scripts append to
``{prefix}:history:{id}``, and their reading back as typed events. Pure.

The key holds one string: entries oldest first, separated by newlines, each
``<kind><Redis time, ms, base 36>`` then ``|``-separated fields (empty trailing fields left out).
The scripts stamp every entry with Redis' clock (``lib.lua``, ``history``); what a record adds is
built here (``record_entries``) and handed to the script without its time, as ``<kind>|fields``.
Compact on purpose: a 6-check poll's story costs about 230 bytes of Redis memory (the bench
measures it), so it can be kept for every container as long as its result.

    q  enqueued           [r: restarted], platform (when not threads)
    c  a status check     API status, latency ms, error kind, code, subcode, fbtrace_id
    t  throttled          pause ms, latency ms (of a throttled answer), kind, code, subcode, fbtrace
    w  paced              wait ms (for the account's pacing slot)
    a  publish claimed    attempt
    p  publish answered   verdict, latency ms, kind, code, subcode, fbtrace_id, media id
    h  webhook attempt    outcome (d delivered, r retry, x dead), attempt, reason
    x  cancelled          reason
    k  carousel child     child id, its final status (in the parent's history)
    f  final              status, checks

Statuses are shortened (``STATUS_CODES``); any other status is stored as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from worker.core.decisions import Decision
from worker.core.errors import Failure

SEPARATOR = "\n"
FIELD = "|"
# Free text (a webhook's reason, a cancel's) is cut to this; an entry never nears the cap.
MAX_TEXT = 120
# What the scripts keep (lib.lua, HISTORY_MAX_BYTES: the same number): the newest entries that
# fit, whole.
MAX_BYTES = 1024

STATUS_CODES = {
    "IN_PROGRESS": "P",
    "FINISHED": "F",
    "PUBLISHED": "U",
    "ERROR": "E",
    "EXPIRED": "X",
    "TIMED_OUT": "T",
    "CANCELLED": "C",
}
_STATUS_NAMES = {v: k for k, v in STATUS_CODES.items()}
_WEBHOOK = {"delivered": "d", "retry": "r", "dead": "x"}
_WEBHOOK_NAMES = {v: k for k, v in _WEBHOOK.items()}


class EventKind(StrEnum):
    ENQUEUED = "enqueued"
    CHECK = "check"
    THROTTLED = "throttled"
    PACED = "paced"
    PUBLISH_CLAIMED = "publish_claimed"
    PUBLISH = "publish"
    WEBHOOK = "webhook"
    CANCELLED = "cancelled"
    CHILD = "child"
    FINAL = "final"


_KINDS = {
    "q": EventKind.ENQUEUED,
    "c": EventKind.CHECK,
    "t": EventKind.THROTTLED,
    "w": EventKind.PACED,
    "a": EventKind.PUBLISH_CLAIMED,
    "p": EventKind.PUBLISH,
    "h": EventKind.WEBHOOK,
    "x": EventKind.CANCELLED,
    "k": EventKind.CHILD,
    "f": EventKind.FINAL,
}


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One entry of a container's history. ``at``: Redis' clock, Unix seconds (ms precision).
    Fields a kind does not have are None (``as_dict`` leaves them out)."""

    kind: EventKind
    at: float
    # check: the API's status ("" when the request failed); final: the poll's final status;
    # child: the child's final status.
    status: str | None = None
    latency_ms: int | None = None
    error_kind: str | None = None
    error_code: int | None = None
    error_subcode: int | None = None
    fbtrace_id: str | None = None
    # throttled: how long the account pauses; paced: the wait for a pacing slot.
    wait_ms: int | None = None
    # publish_claimed, webhook: the attempt's number.
    attempt: int | None = None
    # enqueued: "enqueued" / "restarted"; publish: the verdict (worker.core.publishing);
    # webhook: delivered / retry / dead.
    outcome: str | None = None
    media_id: str | None = None
    # final: the poll's checks.
    checks: int | None = None
    # webhook, cancelled: the reason; child: the child's id.
    detail: str | None = None
    # enqueued: the poll's platform when it is not Threads.
    platform: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON: ``kind``, ``at`` and the fields it has."""
        return {k: (str(v) if k == "kind" else v) for k, v in asdict(self).items() if v is not None}


# ----- writing (what a record hands its script) ------------------------------------------------


def _text(value: str | None) -> str:
    """Free text as one field: no newline (the entries' separator), at most MAX_TEXT."""
    if not value:
        return ""
    return " ".join(value.split())[:MAX_TEXT]


def _status(status: str | None) -> str:
    if not status:
        return ""
    return STATUS_CODES.get(status, _text(status))


def _join(kind: str, *fields: object) -> str:
    parts = ["" if f is None else str(f) for f in fields]
    while parts and parts[-1] == "":
        parts.pop()
    # A field never holds the separator or a newline, except a last free-text one (split
    # with a bound when read).
    return FIELD.join([kind, *parts])


def _error(err: Failure | None) -> tuple[str, str, str, str]:
    if err is None:
        return "", "", "", ""
    return (
        _text(err.kind),
        "" if err.code is None else str(err.code),
        "" if err.subcode is None else str(err.subcode),
        _text(err.fbtrace_id).replace(FIELD, ""),
    )


def record_entries(
    decision: Decision,
    *,
    call: str | None = None,
    latency_ms: int | None = None,
    verdict: str | None = None,
    media_id: str | None = None,
    checks: int,
) -> list[str]:
    """The entries one record adds (without their time: the script stamps them).

    ``call``: ``"status"`` after a status call, ``"publish"`` after a publish call, None when
    the run called nothing (a deferral, a window that ended, a quota stop); ``checks``: the
    poll's checks once this record is written."""
    entries: list[str] = []
    if not decision.touch:
        return entries
    err = _error(decision.error)
    pause_ms = round(decision.delay_added * 1000) if not decision.spent else None
    if call == "status":
        if decision.spent:
            entries.append(_join("c", _status(decision.last_api_status), latency_ms, *err))
        else:
            entries.append(_join("t", pause_ms, latency_ms, *err))
            pause_ms = None
    elif call == "publish":
        entries.append(_join("p", _text(verdict), latency_ms, *err, _text(media_id)))
    if pause_ms is not None:
        entries.append(_join("t", pause_ms))
    if decision.final:
        entries.append(_join("f", _status(decision.status), checks))
    return entries


def webhook_entry(outcome: str, attempt: int, reason: str) -> str:
    """A webhook delivery attempt's entry (webhook_settle.lua stamps it)."""
    return _join("h", _WEBHOOK.get(outcome, _text(outcome)), attempt, _text(reason))


def cancel_entry(reason: str) -> str:
    """A cancel's entry (cancel.lua stamps it)."""
    return _join("x", _text(reason))


# ----- reading ---------------------------------------------------------------------------------


def parse_history(raw: bytes | str | None) -> list[HistoryEvent]:
    """The events of a history key's value, oldest first; entries it cannot read are skipped
    (a newer version's kinds, say)."""
    if not raw:
        return []
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    events = []
    for line in text.split(SEPARATOR):
        event = parse_entry(line)
        if event is not None:
            events.append(event)
    return events


def _int(value: str) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _opt(value: str) -> str | None:
    return value or None


def _status_name(code: str) -> str:
    return _STATUS_NAMES.get(code, code)


# Fields per kind: an entry is split into at most this many (the last may hold "|").
_FIELDS = {"q": 2, "c": 6, "t": 6, "w": 1, "a": 1, "p": 7, "h": 3, "x": 1, "k": 2, "f": 2}


def parse_entry(line: str) -> HistoryEvent | None:
    """One entry, or None when it cannot be read."""
    if len(line) < 2 or line[0] not in _KINDS:
        return None
    tag = line[0]
    stamp_text, _, rest = line[1:].partition(FIELD)
    try:
        ms = int(stamp_text, 36)
    except ValueError:
        return None
    fields = rest.split(FIELD, _FIELDS[tag] - 1) if rest else []
    fields += [""] * (_FIELDS[tag] - len(fields))
    kind, at = _KINDS[tag], ms / 1000
    if tag == "q":
        return HistoryEvent(
            kind,
            at,
            outcome="restarted" if fields[0] == "r" else "enqueued",
            platform=_opt(fields[1]),
        )
    if tag in "ct":
        first, latency, ekind, code, subcode, trace = fields
        return HistoryEvent(
            kind,
            at,
            status=_status_name(first) if tag == "c" else None,
            wait_ms=_int(first) if tag == "t" else None,
            latency_ms=_int(latency),
            error_kind=_opt(ekind),
            error_code=_int(code),
            error_subcode=_int(subcode),
            fbtrace_id=_opt(trace),
        )
    if tag == "w":
        return HistoryEvent(kind, at, wait_ms=_int(fields[0]))
    if tag == "a":
        return HistoryEvent(kind, at, attempt=_int(fields[0]))
    if tag == "p":
        verdict, latency, ekind, code, subcode, trace, media = fields
        return HistoryEvent(
            kind,
            at,
            outcome=_opt(verdict),
            latency_ms=_int(latency),
            error_kind=_opt(ekind),
            error_code=_int(code),
            error_subcode=_int(subcode),
            fbtrace_id=_opt(trace),
            media_id=_opt(media),
        )
    if tag == "h":
        outcome, attempt, reason = fields
        return HistoryEvent(
            kind,
            at,
            outcome=_WEBHOOK_NAMES.get(outcome, outcome) or None,
            attempt=_int(attempt),
            detail=_opt(reason),
        )
    if tag == "x":
        return HistoryEvent(kind, at, status="CANCELLED", detail=_opt(fields[0]))
    if tag == "k":
        return HistoryEvent(kind, at, detail=_opt(fields[0]), status=_status_name(fields[1]))
    return HistoryEvent(kind, at, status=_status_name(fields[0]), checks=_int(fields[1]))


def checks_of_last_poll(events: Sequence[HistoryEvent]) -> int:
    """The check entries since the last ``enqueued`` (the current poll's checks)."""
    n = 0
    for event in events:
        if event.kind is EventKind.ENQUEUED:
            n = 0
        elif event.kind is EventKind.CHECK:
            n += 1
    return n


def describe(event: HistoryEvent) -> str:
    """An event in a few words, every field it has (the CLI's table; a console can use it)."""
    e = event
    parts: list[str] = []
    if e.kind is EventKind.ENQUEUED:
        parts.append("poll restarted" if e.outcome == "restarted" else "poll started")
        if e.platform:
            parts.append(f"on {e.platform}")
    elif e.kind is EventKind.CHECK:
        parts.append(e.status or "no status (request failed)")
    elif e.kind is EventKind.THROTTLED:
        parts.append(f"account paused {_seconds(e.wait_ms)}" if e.wait_ms else "throttled")
    elif e.kind is EventKind.PACED:
        parts.append(f"waited {_seconds(e.wait_ms)} for a pacing slot")
    elif e.kind is EventKind.PUBLISH_CLAIMED:
        parts.append(f"publish call, attempt {e.attempt}")
    elif e.kind is EventKind.PUBLISH:
        parts.append(e.outcome or "answered")
    elif e.kind is EventKind.WEBHOOK:
        parts.append(f"{e.outcome}, attempt {e.attempt}")
    elif e.kind is EventKind.CANCELLED:
        parts.append("CANCELLED")
    elif e.kind is EventKind.CHILD:
        parts.append(f"child {e.detail}: {e.status}")
    elif e.kind is EventKind.FINAL:
        parts.append(f"{e.status}, {e.checks} checks")
    if e.latency_ms is not None:
        parts.append(f"{e.latency_ms} ms")
    if e.error_kind or e.error_code is not None:
        code = "" if e.error_code is None else f" code {e.error_code}"
        sub = "" if e.error_subcode is None else f"/{e.error_subcode}"
        parts.append(f"error {e.error_kind or ''}{code}{sub}".replace("  ", " ").strip())
    if e.fbtrace_id:
        parts.append(f"fbtrace_id {e.fbtrace_id}")
    if e.media_id:
        parts.append(f"media {e.media_id}")
    if e.detail and e.kind is not EventKind.CHILD:
        parts.append(e.detail)
    return "; ".join(parts)


def _seconds(ms: int | None) -> str:
    return f"{(ms or 0) / 1000:.3f}s"
