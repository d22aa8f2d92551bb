"""What a request asks for, checked before anything is read or written. Pure.

Every function takes the raw value (a JSON body already decoded, a query parameter, a header) and
returns a typed value or raises ``ApiError`` with a stable code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from api_client.platforms import INSTAGRAM
from worker.client.client import MAX_WINDOW_SECONDS
from worker.core.durations import MAX_SINCE_SECONDS, parse_duration
from worker.core.errors import InvalidIdError
from worker.core.ids import MAX_ID_LENGTH, validate_children, validate_id, validate_platform
from worker.core.states import FINAL_STATES
from worker.core.targets import parse_target
from worker.store.admin import (
    INFLIGHT_CURSOR_FORM,
    MAX_PAGE,
    MAX_REASON_LENGTH,
    STREAM_ID_FORM,
    DeadLetterKind,
    validate_stream_id,
)
from worker.web.errors import ApiError

ENQUEUE_FIELDS = frozenset(
    {
        "container_id",
        "container_ids",
        "platform",
        "account",
        "force",
        "publish",
        "webhook_url",
        "window_seconds",
        "reply_to",
        "children",
    }
)
CANCEL_FIELDS = frozenset({"reason"})

# What each parser below accepts, as the JSON Schema ``pattern`` /v1/openapi.json gives it (so a
# value valid by the document is never refused, nor the reverse; tests/unit/test_web.py checks
# both ways). The parsers ``str.strip()`` first; JSON Schema's ``\s`` (ECMA-262) is another set
# than ``str.isspace()``, so the set is spelled out.
_WS = r"[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
_STREAM = STREAM_ID_FORM  # worker.store.admin.validate_stream_id
ID_PATTERN = rf"^{_WS}[0-9]{{1,{MAX_ID_LENGTH}}}{_WS}$"  # worker.core.ids.validate_id
STREAM_ID_PATTERN = rf"^{_WS}{_STREAM}{_WS}$"
# "0": from the start. Not empty: EventSource sends no header before its first event, and an
# empty value is refused like every other empty parameter.
LAST_EVENT_ID_PATTERN = rf"^{_WS}(0|{_STREAM}){_WS}$"
# The longest traceparent header looked at (the document's maxLength; a W3C one has 55).
MAX_TRACEPARENT_HEADER = 512
# worker.core.durations.parse_duration: each unit once, largest first, any case, more than 0
# (some digit is not 0); longer than MAX_SINCE_SECONDS counts as that (no pattern can say it).
SINCE_PATTERN = (
    rf"^{_WS}(?=[^1-9]*[1-9])([0-9]{{1,6}}[dD])?([0-9]{{1,6}}[hH])?([0-9]{{1,6}}[mM])?"
    rf"([0-9]{{1,6}}[sS])?{_WS}$"
)
# The cursors each list hands out as next_cursor (worker.store.admin); empty: the first page.
# "$(?!\n)": the end, in Python's re as in ECMA-262 (Python's "$" also matches before a final
# newline).
_END = r"$(?!\n)"
STREAM_CURSOR_PATTERN = rf"^({_STREAM})?{_END}"  # finals, failures, dead letters
INFLIGHT_CURSOR_PATTERN = rf"^({INFLIGHT_CURSOR_FORM})?{_END}"  # "deadline:container id"
ACCOUNT_CURSOR_PATTERN = rf"^([0-9]{{1,9}})?{_END}"  # an offset
# ?wait=: a JSON number (float() would also take " 1", "1_0", "+1" and "infinity").
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")

# ``?status=ERROR,EXPIRED``: final states, comma-separated (worker.core.states.FINAL_STATES).
_STATES = "|".join(sorted(FINAL_STATES))
STATUS_PATTERN = rf"^{_WS}({_STATES})(,({_STATES}))*{_WS}$"
# ``?account=``: an account id, ``default`` (containers enqueued without one), an Instagram
# account's key (``instagram:<id>``, or ``instagram`` for the deployment's Instagram token).
ACCOUNT_PATTERN = (
    rf"^{_WS}([0-9]{{1,{MAX_ID_LENGTH}}}|default|instagram(:[0-9]{{1,{MAX_ID_LENGTH}}})?){_WS}$"
)


@dataclass(frozen=True, slots=True)
class EnqueueSpec:
    """``POST /v1/containers``: the ids and the options they share (as ``enqueue_many``)."""

    ids: list[str]
    account: str | None = None
    force: bool = False
    publish: bool = False
    webhook_url: str | None = None
    window_seconds: float | None = None
    reply_to: str | None = None
    # A carousel's items (with one ``container_id``, its parent); empty: not a carousel.
    children: tuple[str, ...] = ()
    # The body named one ``container_id`` (not a list).
    single: bool = False
    # Whose containers: ``threads`` or ``instagram`` (``api_client.platforms``).
    platform: str = "threads"


def _object(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError("invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise ApiError(
            "unknown_field",
            f"unknown field(s) {shown}; allowed: {', '.join(sorted(allowed))}",
            fields=unknown[:20],
        )
    return body


def _bool(body: dict[str, Any], name: str) -> bool:
    # Absent: False. null is refused like any other non-boolean: the document says boolean, and
    # a client that sends null for ``publish`` meant something we should not guess.
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError("invalid_body", f"{name} must be true or false")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError("invalid_body", f"{name} must be a string")
    return value


def parse_enqueue(body: Any, *, max_batch: int) -> EnqueueSpec:
    """One id (``container_id``) or a batch (``container_ids``), with the options of
    ``threads-poller enqueue``: ``account``, ``force``, ``publish``, ``webhook_url``,
    ``reply_to``, ``children`` (one parent: a carousel), ``platform`` and the poll's
    ``window_seconds``.
    Nothing is enqueued unless every id is valid."""
    data = _object(body, ENQUEUE_FIELDS)
    has_one, has_many = "container_id" in data, "container_ids" in data
    if has_one == has_many:
        raise ApiError("invalid_body", "give either container_id or container_ids")
    raw_ids: list[Any]
    if has_one:
        raw_ids = [data["container_id"]]
    else:
        many = data["container_ids"]
        if not isinstance(many, list):
            raise ApiError("invalid_body", "container_ids must be a list of strings")
        if not many:
            raise ApiError("empty_batch")
        if len(many) > max_batch:
            raise ApiError(
                "batch_too_large",
                f"{len(many)} container ids; at most {max_batch} per request",
                max_batch=max_batch,
            )
        raw_ids = many
    ids: list[str] = []
    for i, raw in enumerate(raw_ids):
        if not isinstance(raw, str):
            where = "container_id" if has_one else f"container_ids[{i}]"
            raise ApiError("invalid_id", f"{where} must be a string of digits")
        try:
            ids.append(validate_id(raw))
        except InvalidIdError as exc:
            raise ApiError("invalid_id", f"refused, nothing enqueued: {exc}") from None
    account = _optional_str(data, "account")
    hook = _optional_str(data, "webhook_url")
    reply_to = _optional_str(data, "reply_to")
    children = data.get("children")
    if children is not None and not has_one:
        raise ApiError("invalid_body", "children go with one container_id (the carousel parent)")
    if children is not None and not (
        isinstance(children, list) and all(isinstance(c, str) for c in children)
    ):
        raise ApiError("invalid_body", "children must be a list of strings")
    try:
        platform = validate_platform(_optional_str(data, "platform"))
        account = validate_id(account, what="account id") if account is not None else None
        hook = parse_target(hook).url if hook is not None else None
        reply_to = validate_id(reply_to, what="reply_to id") if reply_to is not None else None
        kids = (
            validate_children(children, parent=ids[0], max_children=platform.max_children)
            if children is not None
            else ()
        )
    except InvalidIdError as exc:
        raise ApiError("invalid_id", f"refused, nothing enqueued: {exc}") from None
    window = data.get("window_seconds")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ApiError("invalid_window", "window_seconds must be a number")
        if not (math.isfinite(window) and 0 <= window <= MAX_WINDOW_SECONDS):
            raise ApiError(
                "invalid_window", f"window_seconds must be between 0 and {MAX_WINDOW_SECONDS:g}"
            )
        window = float(window)
    return EnqueueSpec(
        ids=ids,
        account=account,
        force=_bool(data, "force"),
        publish=_bool(data, "publish"),
        webhook_url=hook,
        window_seconds=window,
        reply_to=reply_to,
        children=kids,
        single=has_one,
        platform=platform.name.value,
    )


class _NoBody:
    def __repr__(self) -> str:
        return "NO_BODY"


# An optional body that was not sent (JSON ``null`` is a body: not an object, so refused).
NO_BODY: Any = _NoBody()


def parse_cancel(body: Any) -> str | None:
    """``POST /v1/containers/{id}/cancel``: an optional ``reason`` (kept in ``last_error``);
    ``body`` is the decoded JSON, or ``NO_BODY``."""
    if body is NO_BODY:
        return None
    data = _object(body, CANCEL_FIELDS)
    # Absent: no reason; null is not a string (the document says string), so it is refused.
    if "reason" not in data:
        return None
    reason = data["reason"]
    if not isinstance(reason, str):
        raise ApiError("invalid_body", "reason must be a string")
    if len(reason) > MAX_REASON_LENGTH:
        raise ApiError("invalid_body", f"reason is longer than {MAX_REASON_LENGTH} characters")
    return reason


def parse_container_id(raw: str) -> str:
    try:
        return validate_id(raw)
    except InvalidIdError as exc:
        raise ApiError("invalid_id", str(exc)) from None


def parse_wait(raw: str | None, *, max_seconds: float) -> float | None:
    """``?wait=S``: seconds to long-poll (0 < S <= ``max_seconds``); None: answer at once.
    An empty ``wait=`` is refused: the document says number."""
    if raw is None:
        return None
    if not _NUMBER.fullmatch(raw):
        raise ApiError("invalid_parameter", "wait must be a number of seconds")
    value = float(raw)
    if not (math.isfinite(value) and 0 <= value <= max_seconds):
        raise ApiError("invalid_parameter", f"wait must be between 0 and {max_seconds:g} seconds")
    return value


def parse_limit(raw: str | None, *, default: int = 50, maximum: int = MAX_PAGE) -> int:
    # An empty ``limit=`` is refused, not read as the default: the document says integer.
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ApiError("invalid_parameter", f"limit must be a whole number from 1 to {maximum}")
    return int(raw)


def _window(raw: str) -> float:
    """A duration the document's pattern allows, counted up to MAX_SINCE_SECONDS: a longer one
    means "all there is" (the lists look back that far at most). Refusing it would refuse
    requests the document allows (no pattern can say 7 days; Schemathesis found ``73d``)."""
    return min(parse_duration(raw, max_seconds=math.inf), MAX_SINCE_SECONDS)


def parse_since(raw: str | None, *, default: str = "1h") -> float:
    # An empty ``since=`` is refused (SINCE_PATTERN), as parse_duration refuses it.
    try:
        return _window(default if raw is None else raw)
    except ValueError as exc:
        raise ApiError("invalid_parameter", f"since: {exc}") from None


def parse_cursor(raw: str | None, pattern: str) -> str | None:
    """``?cursor=``: a ``next_cursor`` of the list's own kind (``pattern``, as the document
    gives it); empty or absent: the first page."""
    if raw is None or raw == "":
        return None
    if not re.fullmatch(pattern, raw):
        raise ApiError("invalid_parameter", "cursor is not one this API returned")
    return raw


def parse_kind(raw: str) -> DeadLetterKind:
    try:
        return DeadLetterKind(raw)
    except ValueError:
        raise ApiError("not_found", "dead letters are 'intake' or 'webhooks'") from None


def parse_letter_id(raw: str) -> str:
    try:
        return validate_stream_id(raw)
    except InvalidIdError as exc:
        raise ApiError("invalid_id", str(exc)) from None


def parse_last_event_id(header: str | None, query: str | None) -> str | None:
    """``Last-Event-ID`` (what EventSource sends on reconnect), or ``?last_event_id=``; an
    events stream id. ``0`` replays everything the stream still holds. Given empty: refused.
    Both given: the header counts, and the query must be valid too."""
    if query is not None:
        query = _event_id(query)
    return _event_id(header) if header is not None else query


def _event_id(raw: str) -> str:
    raw = raw.strip()
    if raw in ("0", "0-0"):
        return "0-0"
    try:
        return validate_stream_id(raw, what="Last-Event-ID")
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None


def parse_statuses(raw: str | None) -> frozenset[str] | None:
    """``?status=ERROR,EXPIRED``: these final states only (None: any)."""
    if raw is None:
        return None
    names = [n.strip() for n in raw.strip().split(",")]
    unknown = [n for n in names if n not in FINAL_STATES]
    if unknown or not names:
        raise ApiError(
            "invalid_parameter",
            f"status takes final states, comma-separated: {', '.join(sorted(FINAL_STATES))}",
        )
    return frozenset(names)


def parse_account(raw: str | None) -> str | None:
    """``?account=``: an account id, ``default`` or an Instagram account key; None: every
    account."""
    if raw is None:
        return None
    value = raw.strip()
    if value in ("default", INSTAGRAM.account_key("")):
        return value
    try:
        if value.startswith(INSTAGRAM.account_prefix):
            return INSTAGRAM.account_key(
                validate_id(value.removeprefix(INSTAGRAM.account_prefix), what="account")
            )
        return validate_id(value, what="account")
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", f"account: {exc}") from None


def parse_until(raw: str | None) -> float | None:
    """``?until=30m``: only what is at least that old (with ``since``: a time range)."""
    if raw is None:
        return None
    try:
        return _window(raw)
    except ValueError as exc:
        raise ApiError("invalid_parameter", f"until: {exc}") from None
