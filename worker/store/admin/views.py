"""What the operator's store hands out and takes: its limits, the outcomes of its actions, the
views of in-flight polls, final events, accounts, dead letters and actions, and the parsing of
what Redis holds into them (``worker.store.admin``). No Redis call here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from api_client.models import QuotaSnapshot, explain_error_message
from api_client.platforms import platform_or_default
from worker.core.errors import InvalidIdError
from worker.core.result import PollResult
from worker.core.states import SUCCESS_STATES, State
from worker.store.queue import text

T = TypeVar("T")

MAX_PAGE = 500
# Final-state events one request reads at most while looking for failures.
SCAN_LIMIT = 10_000
# Accounts the gauges and the console look at (most recently enqueued first).
ACCOUNTS_LIMIT = 5_000
MAX_REASON_LENGTH = 200
STATS_TTL_SECONDS = 2 * 3600  # worker.ops.stats keeps its hashes as long
# What intake.py appends to a value it cut short in a dead letter (it cannot be replayed).
TRUNCATED = "...[truncated]"
DEFAULT_ACCOUNT = "default"
# Prefix search (``find_ids``): ids returned, SCAN calls, and COUNT per call.
SEARCH_LIMIT = 50
SEARCH_CALLS = 20
SEARCH_COUNT = 1000
# The operators' actions kept (about), and how many the page of a container looks through.
AUDIT_MAX_LEN = 10_000
AUDIT_SCAN = 2_000

# A stream entry id: each part below 2**64 (what Redis takes; 20 digits may be over it), so 19
# digits at most. The API's document spells its patterns with these (worker.web.requests).
STREAM_ID_FORM = r"[0-9]{1,19}-[0-9]{1,19}"
# An in-flight page's cursor, "deadline:container id".
INFLIGHT_CURSOR_FORM = r"([0-9]{1,16}(?:\.[0-9]{1,3})?):([0-9]{1,32})"
_STREAM_ID = re.compile(rf"^{STREAM_ID_FORM}$")
INFLIGHT_CURSOR = re.compile(rf"^{INFLIGHT_CURSOR_FORM}$")


class DeadLetterKind(StrEnum):
    INTAKE = "intake"
    WEBHOOKS = "webhooks"


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # never enqueued, or its result expired
    FINAL = "final"  # already final: nothing to cancel
    PUBLISHING = "publishing"  # a publish call may be under way: try again once it is recorded
    CHANGED = "changed"  # the id was enqueued again while cancelling, three times over


class ReplayOutcome(StrEnum):
    REPLAYED = "replayed"
    GONE = "gone"  # no such dead letter (discarded, replayed, trimmed)
    BUSY = "busy"  # a delivery of the same id is live
    TRUNCATED = "truncated"  # a value was cut short when dead-lettered: replaying it is wrong
    UNREADABLE = "unreadable"
    EMPTY = "empty"


def validate_stream_id(raw: object, *, what: str = "dead letter id") -> str:
    """A Redis stream entry id (``1795438388610-0``)."""
    value = raw.strip() if isinstance(raw, str) else ""
    if not _STREAM_ID.fullmatch(value):
        raise InvalidIdError(f"{what} must look like 1795438388610-0")
    return value


def stream_top(cursor: str | None) -> str | None:
    """The exclusive top of an XREVRANGE that goes on after ``cursor``; None: nothing can
    come before it (``0-0``, which Redis refuses as an exclusive end)."""
    if cursor is None:
        return "+"
    entry_id = validate_stream_id(cursor, what="cursor")
    if all(int(part) == 0 for part in entry_id.split("-")):
        return None
    return "(" + entry_id


def stream_ms(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    # Pass as ``cursor`` for the next page; None: this was the last one.
    next_cursor: str | None = None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class InflightPoll:
    container_id: str
    deadline_at: float
    result: PollResult | None  # None: listed, but its hash is gone (the reconciler removes it)


@dataclass(frozen=True, slots=True)
class FinalEvent:
    """One entry of ``{prefix}:events``."""

    id: str
    container_id: str
    status: str
    error_message: str | None
    account: str | None
    checks: int
    finalized_at: float | None
    last_error: str | None
    media_id: str | None
    # No field (an event written before Instagram): threads.
    platform: str = "threads"

    @classmethod
    def of(cls, entry_id: str, raw: Mapping[Any, Any]) -> FinalEvent:
        h = {text(k): text(v) for k, v in raw.items()}
        checks = h.get("checks", "")
        at = h.get("finalized_at", "")
        return cls(
            id=entry_id,
            container_id=h.get("container_id", ""),
            status=h.get("status", ""),
            error_message=h.get("error_message") or None,
            account=h.get("account") or None,
            checks=int(checks) if checks.isascii() and checks.isdigit() else 0,
            finalized_at=float(at) if at else stream_ms(entry_id),
            last_error=h.get("last_error") or None,
            media_id=h.get("media_id") or None,
            platform=platform_or_default(h.get("platform")).name.value,
        )

    @property
    def failed(self) -> bool:
        return self.status not in SUCCESS_STATES

    @property
    def error_explanation(self) -> str | None:
        return explain_error_message(self.error_message, self.platform) or None

    @property
    def reason(self) -> str:
        """What went wrong, readable: Meta's reason explained, else our last error."""
        if self.status == State.ERROR and self.error_message:
            return f"{self.error_message}: {self.error_explanation}"
        return self.last_error or self.error_explanation or ""


@dataclass(frozen=True, slots=True)
class AccountView:
    """One account's shared state (``{prefix}:account:{id}``) and cached quota. Token-free:
    whether its token was rejected, never the token or its fingerprint."""

    account: str
    last_seen_at: float | None = None
    throttled_until: float = 0.0
    throttle_level: int = 0
    throttled_total: int = 0
    throttled_since: float | None = None
    last_throttle_code: str | None = None
    last_throttled_at: float | None = None
    token_rejected: bool = False
    token_rejected_at: float | None = None
    token_rejected_reason: str | None = None
    token_rejected_code: str | None = None
    # The current token's lifecycle (lua/token.lua; from the tokens file or a refresh).
    token_expires_at: float | None = None
    token_issued_at: float | None = None
    token_seen_at: float | None = None
    token_refreshed_at: float | None = None
    token_refreshes: int = 0
    token_refresh_failures: int = 0
    token_refresh_retry_at: float | None = None
    token_refresh_error: str | None = None
    quota: QuotaSnapshot | None = None

    @classmethod
    def of(
        cls, account: str, raw: Mapping[Any, Any], quota: Any, last_seen: float | None
    ) -> AccountView:
        h = {text(k): text(v) for k, v in raw.items()}
        snapshot = None
        if quota:
            try:
                snapshot = QuotaSnapshot.model_validate_json(quota)
            except ValueError:
                snapshot = None
        return cls(
            account=account,
            last_seen_at=last_seen,
            throttled_until=_float(h.get("throttled_until")) or 0.0,
            throttle_level=int(_float(h.get("throttle_level")) or 0),
            throttled_total=int(_float(h.get("throttled_total")) or 0),
            throttled_since=_float(h.get("throttled_since")),
            last_throttle_code=h.get("last_throttle_code") or None,
            last_throttled_at=_float(h.get("last_throttled_at")),
            token_rejected=bool(h.get("token_rejected_fp")),
            token_rejected_at=_float(h.get("token_rejected_at")),
            token_rejected_reason=h.get("token_rejected_reason") or None,
            token_rejected_code=h.get("token_rejected_code") or None,
            token_expires_at=_float(h.get("token_expires_at")),
            token_issued_at=_float(h.get("token_issued_at")),
            token_seen_at=_float(h.get("token_seen_at")),
            token_refreshed_at=_float(h.get("token_refreshed_at")),
            token_refreshes=int(_float(h.get("token_refreshes")) or 0),
            token_refresh_failures=int(_float(h.get("token_refresh_failures")) or 0),
            token_refresh_retry_at=_float(h.get("token_refresh_retry_at")),
            token_refresh_error=h.get("token_refresh_error") or None,
            quota=snapshot,
        )

    def throttled(self, now: float) -> bool:
        return self.throttled_until > now

    def token_expires_in(self, now: float) -> float | None:
        return None if self.token_expires_at is None else self.token_expires_at - now

    def pause_left(self, now: float) -> float:
        return max(0.0, self.throttled_until - now)

    def throttled_for(self, now: float) -> float:
        """How long the current episode of throttling has lasted (0 when not throttled)."""
        if not self.throttled(now):
            return 0.0
        start = self.throttled_since or self.last_throttled_at or now
        return max(0.0, now - start)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kind: DeadLetterKind
    id: str
    reason: str
    # Intake: the entry's fields as they were (long values cut short); webhooks: container_id,
    # status, generation, delivery_id, url (redacted), attempts.
    fields: dict[str, str] = field(default_factory=dict)
    # Intake: the id the entry had on the intake stream.
    entry_id: str = ""
    # Intake: the named producer whose stream it came from ("" for the default stream).
    producer: str = ""
    # Webhooks: the signed body of the delivery, as sent (and parsed, None when it is not JSON).
    raw_body: str = field(default="", repr=False)
    body: Any = None
    # Webhooks: the exact URL the delivery was for (``url`` is its redacted form, for display);
    # a replay goes there, not to whatever the container's live poll says now.
    target: str = field(default="", repr=False)

    @property
    def at(self) -> float:
        return stream_ms(self.id)

    @property
    def replayable(self) -> bool:
        if self.kind is DeadLetterKind.WEBHOOKS:
            return bool(
                self.fields.get("container_id") and self.fields.get("generation") and self.raw_body
            )
        return bool(self.fields) and not any(v.endswith(TRUNCATED) for v in self.fields.values())


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which final events a list keeps (``AdminStore.finals``)."""

    failed_only: bool = False
    statuses: frozenset[str] | None = None
    account: str | None = None

    def matches(self, event: FinalEvent) -> bool:
        if self.failed_only and not event.failed:
            return False
        if self.statuses is not None and event.status not in self.statuses:
            return False
        return self.account is None or (event.account or DEFAULT_ACCOUNT) == self.account


@dataclass(frozen=True, slots=True)
class Found:
    """Ids found by prefix; ``complete``: every key was looked at."""

    ids: list[str]
    complete: bool


@dataclass(frozen=True, slots=True)
class Action:
    """One entry of ``{prefix}:audit``."""

    id: str
    action: str
    target: str
    reason: str
    actor: str
    outcome: str

    @property
    def at(self) -> float:
        return stream_ms(self.id)

    @classmethod
    def of(cls, entry_id: str, raw: Mapping[Any, Any]) -> Action:
        h = {text(k): text(v) for k, v in raw.items()}
        return cls(
            entry_id,
            h.get("action", ""),
            h.get("target", ""),
            h.get("reason", ""),
            h.get("actor", ""),
            h.get("outcome", ""),
        )


@dataclass(frozen=True, slots=True)
class Cancelled:
    outcome: CancelOutcome
    status: str = ""
    event_id: str = ""
    result: PollResult | None = None


@dataclass(frozen=True, slots=True)
class Replayed:
    outcome: ReplayOutcome
    # The new intake entry's id (intake replays).
    entry_id: str = ""


def clean_reason(reason: str | None) -> str:
    """An operator's note, kept printable and short (it is stored in ``last_error``)."""
    if not reason:
        return ""
    kept = "".join(c if c.isprintable() else " " for c in reason).strip()
    return kept[:MAX_REASON_LENGTH]


def dead_letter_of(kind: DeadLetterKind, letter_id: str, raw: Mapping[Any, Any]) -> DeadLetter:
    h = {text(k): v for k, v in raw.items()}
    reason = text(h.get("reason"))
    if kind is DeadLetterKind.INTAKE:
        try:
            decoded = json.loads(text(h.get("fields")) or "{}")
        except ValueError:
            decoded = {}
        fields = {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
        return DeadLetter(
            kind,
            letter_id,
            reason,
            fields,
            entry_id=text(h.get("entry_id")),
            producer=text(h.get("producer")),
        )
    body_raw = h.get("body")
    body_text = text(body_raw) if body_raw is not None else ""
    try:
        body = json.loads(body_text) if body_text else None
    except ValueError:
        body = None
    names = ("container_id", "status", "generation", "delivery_id", "url", "attempts", "at")
    fields = {n: text(h.get(n)) for n in names if h.get(n) is not None}
    return DeadLetter(
        kind, letter_id, reason, fields, raw_body=body_text, body=body, target=text(h.get("target"))
    )


def page_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None
