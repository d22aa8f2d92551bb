"""What the console's pages show, from a request's query or form and the store's values. Pure.

The filters of ``/containers`` (the API's, ``worker.web.requests``), the links that keep them
across pages, the targets of an action, the rows of a container's page, and the view-model of
its timeline (``TimelineRow``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from worker.core.history import EventKind, HistoryEvent, describe
from worker.core.result import TIME_FIELDS, PollResult
from worker.core.states import FINAL_STATES, SUCCESS_STATES
from worker.store.admin import DeadLetterKind
from worker.web.access import Verdict
from worker.web.errors import ApiError
from worker.web.requests import (
    INFLIGHT_CURSOR_PATTERN,
    STREAM_CURSOR_PATTERN,
    parse_account,
    parse_container_id,
    parse_cursor,
    parse_letter_id,
    parse_limit,
    parse_since,
    parse_statuses,
    parse_until,
)

# What one bulk action touches at most ("everything this filter shows" included).
BULK_MAX = 500
PAGE_SIZE = 50
INFLIGHT = "inflight"
FAILURES = "failures"
# The status choices of /containers: in flight, failures, any final state, or one of them.
STATUS_CHOICES: tuple[tuple[str, str], ...] = (
    ("", "any final state"),
    (INFLIGHT, "in flight"),
    (FAILURES, "failures (not FINISHED or PUBLISHED)"),
    *((s, s) for s in sorted(FINAL_STATES)),
)
CONTAINER_ACTIONS = {"cancel": "Cancel", "poll": "Poll again"}
LETTER_ACTIONS = {"replay": "Replay", "discard": "Discard"}
ACTIONS = {**CONTAINER_ACTIONS, **LETTER_ACTIONS}


@dataclass(frozen=True, slots=True)
class ListFilter:
    """The filters of ``/containers`` (and of the API's list routes)."""

    status: str = ""  # "", INFLIGHT, FAILURES or one final state
    account: str | None = None
    since: str = "1h"
    until: str = ""
    limit: int = PAGE_SIZE
    cursor: str | None = None

    @property
    def inflight(self) -> bool:
        return self.status == INFLIGHT

    @property
    def failed_only(self) -> bool:
        return self.status == FAILURES

    @property
    def statuses(self) -> frozenset[str] | None:
        return frozenset({self.status}) if self.status in FINAL_STATES else None

    @property
    def since_seconds(self) -> float:
        return parse_since(self.since)

    @property
    def until_seconds(self) -> float | None:
        return parse_until(self.until) if self.until else None

    def query(self, **changes: Any) -> str:
        """This filter as a query string (``cursor`` and the rest overridable); empty values
        left out, so that a link reads like what an operator would type."""
        f = replace(self, **changes)
        pairs = {
            "status": f.status,
            "account": f.account or "",
            "since": f.since if f.since != "1h" else "",
            "until": f.until,
            "limit": str(f.limit) if f.limit != PAGE_SIZE else "",
            "cursor": f.cursor or "",
        }
        return urlencode({k: v for k, v in pairs.items() if v})

    def describe(self) -> str:
        """In words, for a confirmation ("failures of account 123 in the last 1h")."""
        what = dict(STATUS_CHOICES).get(self.status, self.status)
        parts = [f"containers {what}" if self.inflight else f"final states: {what}"]
        if self.account:
            parts.append(f"account {self.account}")
        if not self.inflight:
            parts.append(
                f"since {self.since} ago" + (f", until {self.until} ago" if self.until else "")
            )
        return ", ".join(parts)


def _blank(raw: Any) -> str | None:
    """A form's empty field is absent (the console's forms send every field)."""
    if raw is None:
        return None
    value = str(raw).strip()
    return value or None


def parse_filter(query: Mapping[str, Any], *, limit_max: int = BULK_MAX) -> ListFilter:
    """``/containers?status=&account=&since=&until=&limit=&cursor=`` (ApiError 400 on a bad
    value, as the API)."""
    status = _blank(query.get("status")) or ""
    if status not in (INFLIGHT, FAILURES, ""):
        statuses = parse_statuses(status)
        if statuses is None or len(statuses) != 1:
            raise ApiError("invalid_parameter", "status takes one state")
    since = _blank(query.get("since")) or "1h"
    until = _blank(query.get("until")) or ""
    parse_since(since)
    parse_until(until or None)
    return ListFilter(
        status=status,
        account=parse_account(_blank(query.get("account"))),
        since=since,
        until=until,
        limit=parse_limit(_blank(query.get("limit")), default=PAGE_SIZE, maximum=limit_max),
        # In flight pages by deadline, final states by their stream id: each its own cursor.
        cursor=parse_cursor(
            _blank(query.get("cursor")),
            INFLIGHT_CURSOR_PATTERN if status == INFLIGHT else STREAM_CURSOR_PATTERN,
        ),
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What an action touches: a container (``kind`` "container") or a dead letter."""

    kind: str  # container | intake | webhooks
    id: str

    @property
    def value(self) -> str:
        """As a form field carries it."""
        return self.id if self.kind == "container" else f"{self.kind}:{self.id}"

    @property
    def href(self) -> str:
        return f"/containers/{self.id}" if self.kind == "container" else "/#dead-letters"

    @property
    def label(self) -> str:
        return self.id if self.kind == "container" else f"{self.kind} dead letter {self.id}"


def parse_action(raw: Any) -> str:
    value = _blank(raw) or ""
    if value not in ACTIONS:
        raise ApiError("invalid_parameter", f"action must be one of {', '.join(ACTIONS)}")
    return value


def parse_targets(action: str, values: Iterable[Any]) -> list[Target]:
    """The selected rows of a form (``target`` fields), checked, deduplicated, in order; at
    most BULK_MAX, at least one."""
    out: list[Target] = []
    seen: set[str] = set()
    for raw in values:
        value = str(raw).strip()
        if action in CONTAINER_ACTIONS:
            target = Target("container", parse_container_id(value))
        else:
            kind, _, letter = value.partition(":")
            if kind not in {k.value for k in DeadLetterKind}:
                raise ApiError("invalid_parameter", "a dead letter is intake:ID or webhooks:ID")
            target = Target(kind, parse_letter_id(letter))
        if target.value not in seen:
            seen.add(target.value)
            out.append(target)
    if not out:
        raise ApiError("invalid_parameter", "select at least one row")
    if len(out) > BULK_MAX:
        raise ApiError("invalid_parameter", f"at most {BULK_MAX} at once")
    return out


def actor_name(verdict: Verdict | None) -> str:
    """The name an action is stored with: the key's fingerprint (what sessions and the access
    log name it by) and its producer, if bound to one. Never the key."""
    key = verdict.key if verdict is not None else None
    if key is None:
        return "open access (no API key)"
    name = f"key {key.fingerprint}"
    return f"{name} (producer {key.producer})" if key.producer else name


def clean_reason_field(raw: Any, *, maximum: int) -> str:
    """The confirmation's required reason: printable, not blank, at most ``maximum``."""
    text = " ".join(str(raw or "").split())
    if not text:
        raise ApiError("invalid_parameter", "a reason is required")
    if len(text) > maximum:
        raise ApiError("invalid_parameter", f"the reason is longer than {maximum} characters")
    return text


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one action did to one target (shown in its row)."""

    target: Target
    ok: bool
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One line of a container's timeline (the history reader's events, made readable)."""

    at: float  # Redis time (s)
    kind: str  # check, throttle, pacing, publish, webhook, cancel, final, ...
    summary: str
    detail: str = ""
    bad: bool = False


# What a timeline row is marked as gone wrong: a check or publish that failed, a webhook that
# did not deliver, and final states other than the successes.
_BAD_WEBHOOK = ("dead",)
_BAD_PUBLISH = ("unconfirmed", "quota_exhausted", "failed")


def timeline(events: Iterable[HistoryEvent]) -> list[TimelineRow]:
    """A container's history (``worker.core.history``) as its page's timeline, oldest first:
    every event with its one-line description (every field it has)."""
    rows: list[TimelineRow] = []
    for e in events:
        bad = bool(e.error_kind or e.error_code is not None)
        if e.kind in (EventKind.FINAL, EventKind.CHILD, EventKind.CANCELLED):
            bad = bad or (e.status or "CANCELLED") not in SUCCESS_STATES
        elif e.kind is EventKind.WEBHOOK:
            bad = (e.outcome or "") in _BAD_WEBHOOK
        elif e.kind is EventKind.PUBLISH:
            bad = bad or (e.outcome or "") in _BAD_PUBLISH
        rows.append(TimelineRow(at=e.at, kind=e.kind.value, summary=describe(e), bad=bad))
    return rows


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: str
    kind: str = ""  # time | bad | code | ""


BAD_FIELDS = frozenset({"last_error", "error_message", "error_explanation", "failed_child_error"})


def when(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"


def result_fields(data: Mapping[str, Any]) -> list[Field]:
    """Every field of a result (``views.result_json``), in its order, readable: times in UTC,
    lists joined, empty ones kept (an operator asks "was it ever checked?")."""
    out: list[Field] = []
    for name, value in data.items():
        if name in TIME_FIELDS and isinstance(value, int | float):
            out.append(Field(name, when(float(value)), "time"))
        elif value is None or value == "" or value == []:
            out.append(Field(name, "", ""))
        elif isinstance(value, bool):
            out.append(Field(name, "yes" if value else "no"))
        elif isinstance(value, list | tuple):
            out.append(Field(name, ", ".join(str(v) for v in value), "code"))
        else:
            kind = "bad" if name in BAD_FIELDS else ("code" if name.endswith("_id") else "")
            out.append(Field(name, str(value), kind))
    return out


@dataclass(frozen=True, slots=True)
class Reason:
    """A failure, readable: Graph's code, subcode, fbtrace_id, the plain-words explanation."""

    headline: str
    explanation: str = ""
    codes: list[tuple[str, str]] = field(default_factory=list)


def failure_reason(r: PollResult) -> Reason | None:
    if r.status in SUCCESS_STATES or not (r.final or r.last_error):
        return None
    headline = r.error_message or r.last_error or r.status
    codes = [
        (name, str(value))
        for name, value in (
            ("status", r.status),
            ("kind", r.last_error_kind),
            ("Graph code", r.last_error_code),
            ("subcode", r.last_error_subcode),
            ("fbtrace_id", r.last_error_fbtrace_id),
        )
        if value not in (None, "")
    ]
    explanation = r.error_explanation or ""
    if r.error_message and r.last_error and r.last_error != r.error_message:
        explanation = f"{explanation} {r.last_error}".strip()
    return Reason(headline, explanation, codes)
