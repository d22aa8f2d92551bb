"""The poll's state as stored in its result hash, read back as a typed value. Pure.

Times in the hash are Unix seconds to the millisecond (``1795438388.610``), in one format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from api_client.platforms import platform_or_default
from worker.core.tracing import TraceparentError, optional_traceparent


def stamp(t: float) -> str:
    """A time as stored: Unix seconds to the millisecond (``1795438388.610``), rounded down."""
    return ms_stamp(int(t * 1000))


def ms_stamp(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _num(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # "inf" and "nan" parse; no stored time or count means either (and int() refuses both).
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class PollResult:
    """One container's state as stored in its result hash.

    A field missing from the hash means empty / 0 / false: enqueue writes only ``container_id``,
    ``status``, ``final``, ``enqueued_at``, ``deadline_at``, ``generation`` (and ``account``,
    ``publish``, ``webhook_url`` when given), and a write stores an empty value by deleting the
    field. Until the first check is recorded (no ``updated_at`` yet) the next check is due at
    ``enqueued_at``.
    """

    container_id: str
    status: str
    final: bool
    error_message: str | None
    error_explanation: str | None
    last_api_status: str | None
    checks: int
    enqueued_at: float | None
    deadline_at: float | None
    last_checked_at: float | None
    next_check_at: float | None
    finalized_at: float | None
    last_error: str | None
    last_error_kind: str | None
    last_error_code: int | None
    last_error_subcode: int | None
    last_error_fbtrace_id: str | None
    throttled: int
    # Seconds throttling and pacing pushed the window's end out (capped when read).
    window_delay: float
    last_throttled_at: float | None
    publish: bool
    publish_status: str | None
    publish_attempts: int
    media_id: str | None
    published_at: float | None
    finished_at: float | None
    quota_usage: int | None
    quota_total: int | None
    webhook_url: str | None
    webhook_status: str | None
    webhook_attempts: int
    account: str | None
    generation: str
    # Job runs this poll has had (each claim of its check job counts one).
    runs: int = 0
    # Consecutive 100/33 ("does not exist") answers: fatal only when it repeats.
    strikes: int = 0
    intake_entry: str | None = None
    # A reply: the media id it answers (kept for the result; it picks the reply quota and the
    # longer settle time before publishing).
    reply_to: str | None = None
    # A carousel's parent: its children, how many are not FINISHED yet, and when the last one
    # was (the parent's own window starts then; until then it is never polled).
    children: tuple[str, ...] = ()
    children_pending: int = 0
    children_ready_at: float | None = None
    # A child that ended without FINISHED (written into the parent by the child's record).
    failed_child: str | None = None
    failed_child_status: str | None = None
    failed_child_error: str | None = None
    # A carousel's child: its parent, and which poll of the parent it reports to.
    carousel_parent: str | None = None
    parent_generation: str | None = None
    # A reply's publish reads the reply quota (1000 / 24 h), not the post quota.
    reply_quota_usage: int | None = None
    reply_quota_total: int | None = None
    # What the operator should know about a publish that is not an error (media id unknown).
    publish_note: str | None = None
    # A publish claim was given back without a certain answer (the replicas did not acknowledge
    # it): the next run reads the status before it may publish.
    publish_verify: bool = False
    # The poll's trace (W3C ``traceparent``, README "Tracing"): a producer's, or the enqueue
    # span's; read only when valid (``worker.core.tracing``), never shown in a result.
    traceparent: str | None = None
    # Whose container: ``threads`` or ``instagram`` (``api_client.platforms``); no field reads
    # as threads, what every poll before Instagram was.
    platform: str = "threads"

    @property
    def window(self) -> float | None:
        """The poll's own window in seconds (from enqueue, or for a carousel's parent from its
        children being ready), as fixed when it started; None when the hash does not say."""
        start = self.children_ready_at or self.enqueued_at
        if start is None or self.deadline_at is None or self.deadline_at <= start:
            return None
        # Both are stored to the millisecond; the difference of two Unix times that large is
        # off by a few 1e-7 s in floating point, which would cost a check (1.2 / 0.3 < 4).
        return round(self.deadline_at - start, 3)

    @property
    def is_carousel(self) -> bool:
        return bool(self.children)

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> PollResult:
        # Every check reads its poll this way, and a hash holds only a few of the fields: each
        # field present is converted by its kind (``_READ``), the others keep what an absent
        # field means (``_ABSENT``). About half the cost of reading every field by name (issue
        # 22; tests/unit/test_result_hash_read.py holds it to the same values).
        values = dict(_ABSENT)
        for key, value in raw.items():
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            read = _READ.get(name)
            if read is not None:
                values[name] = read(
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                )
            elif name == "updated_at":
                values["updated_at"] = True
        if values["next_check_at"] is None and not values.pop("updated_at"):
            # Written by an older version's enqueue: the first check was due at once.
            values["next_check_at"] = values["enqueued_at"]
        values.pop("updated_at", None)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("generation")
        data.pop("intake_entry")
        data.pop("parent_generation")
        data.pop("publish_verify")
        data.pop("traceparent")
        data["children"] = list(self.children)
        # Instagram's reason is a sentence carrying a subcode: the subcode on its own, for
        # callers that branch on it (None on Threads, whose reasons are names).
        data["error_code"] = platform_or_default(self.platform).reason_code(self.error_message)
        return data


def _opt(value: str) -> str | None:
    return value or None


def _opt_int(value: str) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def _count(value: str) -> int:
    return _opt_int(value) or 0


def _flag(value: str) -> bool:
    return value == "1"


def _text(value: str) -> str:
    return value


def _traceparent(value: str) -> str | None:
    # Written only valid (enqueue.lua checks it too), read only valid: a hash edited by hand
    # cannot hand the tracer something else.
    try:
        return optional_traceparent(value)
    except TraceparentError:
        return None


# The fields that are times (Redis' clock, Unix seconds): read as numbers; the console shows
# them as times.
TIME_FIELDS = (
    "enqueued_at",
    "deadline_at",
    "last_checked_at",
    "next_check_at",
    "finalized_at",
    "last_throttled_at",
    "published_at",
    "finished_at",
    "children_ready_at",
)

# How each field of a result hash is read (``PollResult.from_hash``), and what a field that is
# not in the hash means (an empty value reads the same as no field).
_READ: dict[str, Any] = {
    **dict.fromkeys(("container_id", "status", "generation"), _text),
    **dict.fromkeys(("final", "publish", "publish_verify"), _flag),
    **dict.fromkeys(
        (
            "error_message",
            "error_explanation",
            "last_api_status",
            "last_error",
            "last_error_kind",
            "last_error_fbtrace_id",
            "publish_status",
            "media_id",
            "webhook_url",
            "webhook_status",
            "account",
            "intake_entry",
            "reply_to",
            "failed_child",
            "failed_child_status",
            "failed_child_error",
            "carousel_parent",
            "parent_generation",
            "publish_note",
        ),
        _opt,
    ),
    **dict.fromkeys(
        (
            "checks",
            "throttled",
            "publish_attempts",
            "webhook_attempts",
            "runs",
            "strikes",
            "children_pending",
        ),
        _count,
    ),
    **dict.fromkeys(
        (
            "last_error_code",
            "last_error_subcode",
            "quota_usage",
            "quota_total",
            "reply_quota_usage",
            "reply_quota_total",
        ),
        _opt_int,
    ),
    **dict.fromkeys(TIME_FIELDS, _num),
    "window_delay": lambda value: _num(value) or 0.0,
    "children": lambda value: tuple(c for c in value.split(",") if c),
    "traceparent": _traceparent,
    "platform": lambda value: platform_or_default(value).name.value,
}
_ABSENT: dict[str, Any] = {name: read("") for name, read in _READ.items()}
_ABSENT["updated_at"] = False


# "Clear this field" for an optional count: the hash stores an empty value by deleting it.
CLEAR = 0


@dataclass(frozen=True, slots=True)
class Changes:
    """The fields a run writes beside its decision's, typed; ``None`` leaves a field as it is.

    ``hash_fields()`` is the one place they become hash strings (times through ``stamp``).
    """

    publish_status: str | None = None
    # Consecutive 100/33 answers; CLEAR (0) deletes the field.
    strikes: int | None = None
    finished_at: float | None = None
    published_at: float | None = None
    media_id: str | None = None
    quota_usage: int | None = None
    quota_total: int | None = None
    reply_quota_usage: int | None = None
    reply_quota_total: int | None = None
    publish_note: str | None = None
    # The publish claim's attempts counter, written back (a throttled answer costs no attempt).
    publish_attempts: int | None = None
    # True: read the status before publishing (an uncertain step came first); False clears it.
    publish_verify: bool | None = None

    def merged(self, later: Changes) -> Changes:
        """These changes with ``later``'s set fields written over them."""
        given = {f.name: getattr(later, f.name) for f in fields(later)}
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def hash_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.publish_status is not None:
            out["publish_status"] = str(self.publish_status)
        if self.strikes is not None:
            out["strikes"] = str(self.strikes) if self.strikes else ""
        if self.finished_at is not None:
            out["finished_at"] = stamp(self.finished_at)
        if self.published_at is not None:
            out["published_at"] = stamp(self.published_at)
        if self.media_id is not None:
            out["media_id"] = self.media_id
        if self.quota_usage is not None:
            out["quota_usage"] = str(self.quota_usage)
        if self.quota_total is not None:
            out["quota_total"] = str(self.quota_total)
        if self.reply_quota_usage is not None:
            out["reply_quota_usage"] = str(self.reply_quota_usage)
        if self.reply_quota_total is not None:
            out["reply_quota_total"] = str(self.reply_quota_total)
        if self.publish_note is not None:
            out["publish_note"] = self.publish_note
        if self.publish_attempts is not None:
            out["publish_attempts"] = str(self.publish_attempts)
        if self.publish_verify is not None:
            out["publish_verify"] = "1" if self.publish_verify else ""
        return out

    def __bool__(self) -> bool:
        # Asked once a check (record_fields): the names once, not ``fields()`` every time.
        return any(getattr(self, name) is not None for name in _CHANGES_NAMES)


_CHANGES_NAMES = tuple(f.name for f in fields(Changes))
