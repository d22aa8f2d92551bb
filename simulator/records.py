"""What the simulator's state is made of and answers with, without any rule: the platforms,
the publish faults, the quota's totals, the answers (``Reply`` and its outcomes), the call log's
records, and the settings ``SimulatorRules`` keeps (``simulator.state`` decides with them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from simulator.instagram import (
    IG_PUBLISH_FAULTS,
    IG_QUOTA_DURATION,
    IG_QUOTA_TOTAL,
    IG_REFRESH_GRANT_TYPE,
)
from simulator.steps import (
    BUC_THROTTLE,
    MEDIA_NOT_READY,
    SERVER_ERROR,
    FinalStep,
    GraphErrorStep,
    StatusStep,
    Step,
)

RequestKind = Literal["status", "quota", "publish", "refresh"]
# Which wire format a request came in: the route decides (/v1.0 Threads, /v23.0 Instagram).
Platform = Literal["threads", "instagram"]
PLATFORMS: tuple[str, ...] = get_args(Platform)
# Meta: a refreshed long-lived token is valid for 60 days.
REFRESH_EXPIRES_IN = 60 * 86400
REFRESH_GRANT_TYPE = "th_refresh_token"
REFRESH_GRANT_TYPES: dict[str, Platform] = {
    REFRESH_GRANT_TYPE: "threads",
    IG_REFRESH_GRANT_TYPE: "instagram",
}
BAD_GRANT_TYPE = GraphErrorStep(
    "bad_grant_type", 400, 100, "Unsupported grant_type", error_type="OAuthException"
)
# "*_after_publish": the post goes out, but the answer does not say so (observed: a timeout, a
# 5xx, code 10, a reply without an id).
PublishFault = Literal[
    "timeout_after_publish",
    "500_after_publish",
    "code10_after_publish",
    "noid_after_publish",
    "500",
    "not_ready",
    # Refusals (nothing is published), Instagram's (simulator.instagram); any route answers them.
    "ig_daily_limit",
    "ig_spam",
    "ig_expired",
    "buc_throttle",
]
PUBLISH_FAULTS: tuple[str, ...] = get_args(PublishFault)
# The publish faults that refuse (nothing goes out), and their answers.
PUBLISH_REFUSALS: dict[str, GraphErrorStep] = {
    "500": SERVER_ERROR,
    "not_ready": MEDIA_NOT_READY,
    "buc_throttle": BUC_THROTTLE,
    **IG_PUBLISH_FAULTS,
}

DEFAULT_ACCOUNT = "default"
DEFAULT_FAULT_KINDS: tuple[str, ...] = ("500", "503", "garbage", "slow", "throttle", "429", "drop")
DEFAULT_SLOW_SECONDS = 3.0
USAGE_HEADERS = ("X-App-Usage", "X-Business-Use-Case-Usage")

QUOTA_DURATION = 86400
# Per-profile limits over a moving 24 h, from threads-api.md.
QUOTA_TOTALS: dict[str, int] = {
    "quota_usage": 250,
    "reply_quota_usage": 1000,
    "delete_quota_usage": 100,
    "location_search_quota_usage": 500,
}
QUOTA_CONFIG_FIELDS: dict[str, str] = {
    "config": "quota_usage",
    "reply_config": "reply_quota_usage",
    "delete_config": "delete_quota_usage",
    "location_search_config": "location_search_quota_usage",
}
POST_QUOTA_TOTAL = QUOTA_TOTALS["quota_usage"]
REPLY_QUOTA_TOTAL = QUOTA_TOTALS["reply_quota_usage"]

IN_PROGRESS = StatusStep("IN_PROGRESS")
FINISHED = StatusStep("FINISHED")
PUBLISHED = StatusStep("PUBLISHED")


class ConfigError(ValueError):
    """A setting the simulator cannot use (unknown fault kind, negative rate...)."""


@dataclass(frozen=True, slots=True)
class Published:
    """A successful publish: the reply body is `{"id": media_id}`."""

    media_id: str


@dataclass(frozen=True, slots=True)
class QuotaSnapshot:
    """The usage figures of one user, rendered by the handler into the requested fields."""

    usage: dict[str, int]
    # Instagram's limit (settable per user); None for Threads, whose totals are fixed.
    total: int | None = None


@dataclass(frozen=True, slots=True)
class RefreshAnswer:
    """``GET /refresh_access_token``'s answer (Meta's Threads "Long-lived tokens" page)."""

    access_token: str = field(repr=False)
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the documented token type, not a secret

    @property
    def label(self) -> str:
        return "refreshed"


Outcome = FinalStep | Published | QuotaSnapshot | RefreshAnswer


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer and how long to wait before answering."""

    outcome: Outcome
    delay: float = 0.0
    # The Graph user the call was made for (the key of a buc_throttle's usage header).
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    t: float
    kind: RequestKind
    id: str
    account: str
    answer: str
    platform: Platform = "threads"

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "kind": self.kind,
            "id": self.id,
            "account": self.account,
            "answer": self.answer,
            "platform": self.platform,
        }


@dataclass(frozen=True, slots=True)
class StatusCall:
    """One status call as a hook sees it: when it arrived, for whom, what it will be answered
    and after how long (``t + delay`` is when the answer goes out)."""

    t: float
    container_id: str
    account: str
    answer: str
    delay: float
    # Last, with a default: tests build StatusCall(t, cid, account, answer, delay) positionally.
    platform: Platform = "threads"


StatusHook = Callable[[StatusCall], None]


@dataclass(slots=True)
class ContainerCalls:
    count: int = 0
    times: list[float] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    publish_calls: int = 0
    publishes: int = 0
    # A carousel's parent: status calls made while one of its children was not FINISHED yet.
    early_parent_calls: int = 0
    # A reply published sooner than its settle time after FINISHED: it went out as a standalone
    # post (observed for video replies: the reply_to_id was lost).
    lost_reply_to: int = 0
    # One per status call, beside `times` and `accounts`: the route that was polled.
    platforms: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "times": list(self.times),
            "accounts": list(self.accounts),
            "publish_calls": self.publish_calls,
            "publishes": self.publishes,
            "early_parent_calls": self.early_parent_calls,
            "lost_reply_to": self.lost_reply_to,
            # Only once Instagram's route was polled: a Threads-only container's record stays
            # exactly what it was before Instagram (tests compare it whole).
            **({"platforms": list(self.platforms)} if set(self.platforms) - {"threads"} else {}),
        }


@dataclass(frozen=True, slots=True)
class ReplySetting:
    """A container created as a reply (``reply_to_id`` at creation, on the real API)."""

    reply_to: str
    # Published sooner than this after its first FINISHED answer, it loses its reply_to_id.
    settle_seconds: float = 0.0


@dataclass(slots=True)
class Cursor:
    index: int = 0
    # The last status the script produced; faults leave it alone (they are not states).
    last_status: StatusStep | None = None


@dataclass(slots=True)
class PublishFaultSetting:
    fault: PublishFault
    remaining: int | None  # None: every publish call until cleared


@dataclass(slots=True)
class AccountOverride:
    step: Step
    remaining: int | None  # None: every status call of the account until cleared


@dataclass(slots=True)
class IgQuota:
    """An Instagram user's publishing limit: an admin-set usage offset, the total, and the
    times of the user's successful publishes (those of the last 24 h count)."""

    offset: int = 0
    total: int = IG_QUOTA_TOTAL
    published: list[float] = field(default_factory=list)

    def usage(self, now: float) -> int:
        self.published = [t for t in self.published if now - t < IG_QUOTA_DURATION]
        return self.offset + len(self.published)


@dataclass(frozen=True, slots=True)
class RandomSlow:
    """A random "slow" fault: delay, then answer as if there had been no fault."""

    seconds: float | None  # None: the configured slow_seconds, read when the fault fires
