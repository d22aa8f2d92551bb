"""Everything the simulator remembers, and the decisions it takes, without any HTTP.

The handlers in `app.py` only translate between HTTP and the methods here, so that each rule
(script progression, random faults, publish readiness, quota, auth) lives in one place and can
be read without knowing aiohttp. Every decision is taken and logged synchronously, before any
sleep, so the call log reflects the moment a request arrived even if the client gives up.

Threads and Instagram share every rule here (a container's script, cursor and publish do not
depend on the route that polls it); what differs is passed in as the request's platform: the
publish quota and carousel size, Instagram's refusals, and the platform each call is logged with.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from simulator.instagram import (
    IG_CAROUSEL_TOO_MANY,
    IG_DAILY_LIMIT,
    IG_MAX_CAROUSEL_CHILDREN,
    IG_PUBLISH_FAULTS,
    IG_QUOTA_DURATION,
    IG_QUOTA_TOTAL,
    IG_REFRESH_GRANT_TYPE,
)
from simulator.steps import (
    BUC_THROTTLE,
    MAX_SLOW_SECONDS,
    MEDIA_NOT_READY,
    MISSING_CREATION_ID,
    NO_ID_REPLY,
    PERMISSION_AFTER_PUBLISH,
    QUOTA_EXCEEDED,
    REPLY_QUOTA_EXCEEDED,
    SERVER_ERROR,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_MISSING,
    FinalStep,
    GraphErrorStep,
    SlowStep,
    StatusStep,
    Step,
    StepError,
    parse_step,
    parse_steps,
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
_PUBLISH_REFUSALS: dict[str, GraphErrorStep] = {
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
class _Cursor:
    index: int = 0
    # The last status the script produced; faults leave it alone (they are not states).
    last_status: StatusStep | None = None


@dataclass(slots=True)
class _PublishFaultSetting:
    fault: PublishFault
    remaining: int | None  # None: every publish call until cleared


@dataclass(slots=True)
class _AccountOverride:
    step: Step
    remaining: int | None  # None: every status call of the account until cleared


@dataclass(slots=True)
class _IgQuota:
    """An Instagram user's publishing limit: an admin-set usage offset, the total, and the
    times of the user's successful publishes (those of the last 24 h count)."""

    offset: int = 0
    total: int = IG_QUOTA_TOTAL
    published: list[float] = field(default_factory=list)

    def usage(self, now: float) -> int:
        self.published = [t for t in self.published if now - t < IG_QUOTA_DURATION]
        return self.offset + len(self.published)


@dataclass(frozen=True, slots=True)
class _RandomSlow:
    """A random "slow" fault: delay, then answer as if there had been no fault."""

    seconds: float | None  # None: the configured slow_seconds, read when the fault fires


def _parse_token_spec(spec: str) -> tuple[str, str]:
    token, _, user_id = spec.partition("=")
    if not token:
        raise ConfigError("empty token")
    return token, user_id or DEFAULT_ACCOUNT


def parse_token_specs(specs: Iterable[str]) -> dict[str, str]:
    """`TOKEN[=USER_ID]` strings, as given on the command line, to a token -> user id map."""
    return dict(_parse_token_spec(spec) for spec in specs)


class SimulatorState:
    """Scripts, cursors, faults, quota, tokens and the call log of one simulated Graph API."""

    def __init__(
        self,
        *,
        scripts: Mapping[str, Sequence[str | Step]] | None = None,
        default_script: Sequence[str | Step] = ("notfound",),
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = DEFAULT_FAULT_KINDS,
        slow_seconds: float = DEFAULT_SLOW_SECONDS,
        seed: int | None = None,
        tokens: Mapping[str, str] | None = None,
        expired_tokens: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._rules: dict[str, tuple[Step, ...]] = {}
        self._default: tuple[Step, ...] = parse_steps(default_script)
        self._fault_rate = 0.0
        self._fault_kinds: tuple[Step | _RandomSlow, ...] = ()
        self._fault_kind_names: tuple[str, ...] = ()
        self._slow_seconds = DEFAULT_SLOW_SECONDS
        self._rng = random.Random(seed)
        self._valid_tokens: dict[str, str] = {}
        self._expired_tokens: dict[str, str] = {}
        self._usage: dict[str, dict[str, int]] = {}
        self._ig_quota: dict[str, _IgQuota] = {}
        self._publish_faults: dict[str, _PublishFaultSetting] = {}
        self._usage_headers: dict[str, str] = {}
        self._cursors: dict[str, _Cursor] = {}
        self._published: dict[str, str] = {}
        self._media_counter = 0
        self._calls: dict[str, ContainerCalls] = {}
        self._requests: list[RequestRecord] = []
        self._quota_calls = 0
        self._account_overrides: dict[str, _AccountOverride] = {}
        self._status_hooks: list[StatusHook] = []
        self._carousels: dict[str, tuple[str, ...]] = {}
        self._parent_of: dict[str, str] = {}
        self._replies: dict[str, ReplySetting] = {}
        # When each container first answered FINISHED (a reply's settle time counts from it).
        self._finished_at: dict[str, float] = {}
        # Token refresh: scripted answers (one per call, then success), the lifetime a refresh
        # grants, and each issued token's expiry (past it, the token answers 190/463).
        self._refresh_faults: list[Step] = []
        self._refresh_expires_in = REFRESH_EXPIRES_IN
        self._refresh_calls = 0
        self._refreshed = 0
        self._token_expiry: dict[str, float] = {}
        for key, steps in (scripts or {}).items():
            self.set_script(key, steps)
        self.set_faults(rate=fault_rate, kinds=fault_kinds, slow_seconds=slow_seconds)
        self.set_tokens(valid=tokens or {}, expired=expired_tokens or {})

    # ----- configuration -------------------------------------------------------------------

    def set_script(self, id_or_prefix: str, steps: Sequence[str | Step]) -> None:
        """Script for one container id, or for every id starting with `prefix` if it ends in *.

        Setting an exact id restarts that container's story (cursor, last status, publish), so
        a test can re-script a container it already polled; the call log is kept.
        """
        if not id_or_prefix:
            raise ConfigError("empty script key")
        self._rules[id_or_prefix] = parse_steps(steps)
        if not id_or_prefix.endswith("*"):
            self._cursors.pop(id_or_prefix, None)
            self._published.pop(id_or_prefix, None)

    def remove_script(self, id_or_prefix: str) -> bool:
        return self._rules.pop(id_or_prefix, None) is not None

    def set_default_script(self, steps: Sequence[str | Step]) -> None:
        self._default = parse_steps(steps)

    @property
    def scripts(self) -> dict[str, list[str]]:
        return {key: [step.label for step in steps] for key, steps in self._rules.items()}

    @property
    def default_script(self) -> list[str]:
        return [step.label for step in self._default]

    def set_faults(
        self,
        *,
        rate: float | None = None,
        kinds: Sequence[str] | None = None,
        slow_seconds: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Random faults on status calls; arguments left as None keep their current value.

        Everything is validated before anything changes, so a refused call leaves no half-set
        configuration behind.
        """
        new_rate = self._fault_rate if rate is None else rate
        if not 0.0 <= new_rate <= 1.0:
            raise ConfigError(f"fault rate must be within [0, 1], got {rate}")
        new_kinds = self._fault_kinds
        if kinds is not None:
            new_kinds = tuple(self._parse_fault_kind(kind) for kind in kinds)
        if new_rate > 0 and not new_kinds:
            raise ConfigError("a fault rate needs at least one fault kind")
        new_slow = self._slow_seconds if slow_seconds is None else slow_seconds
        if not 0.0 <= new_slow <= MAX_SLOW_SECONDS:
            raise ConfigError(
                f"slow_seconds must be within [0, {MAX_SLOW_SECONDS:g}], got {slow_seconds}"
            )
        self._fault_rate, self._fault_kinds, self._slow_seconds = new_rate, new_kinds, new_slow
        if kinds is not None:
            self._fault_kind_names = tuple(kinds)
        if seed is not None:
            self._rng.seed(seed)

    @staticmethod
    def _parse_fault_kind(kind: str) -> Step | _RandomSlow:
        # "slow" alone delays a normal answer; "slow:<s>" does so with its own delay.
        if kind == "slow":
            return _RandomSlow(None)
        try:
            step = parse_step(kind)
        except StepError as exc:
            raise ConfigError(f"unknown fault kind {kind!r}") from exc
        if isinstance(step, SlowStep) and step.then is None:
            return _RandomSlow(step.seconds)
        inner: Step | None = step
        while isinstance(inner, SlowStep):
            inner = inner.then
        # A status would move the container's story, which random faults must never do.
        if inner is None or isinstance(inner, StatusStep):
            raise ConfigError(f"a random fault kind must end in a fault, not a status: {kind!r}")
        return step

    @property
    def faults(self) -> dict[str, Any]:
        return {
            "rate": self._fault_rate,
            "kinds": list(self._fault_kind_names),
            "slow_seconds": self._slow_seconds,
        }

    @property
    def slow_seconds(self) -> float:
        return self._slow_seconds

    def set_account_override(
        self, account: str, step: str | Step | None, *, times: int | None = None
    ) -> None:
        """Answer the next ``times`` status calls of any container of ``account`` (the account
        the token maps to) with ``step``, whatever their scripts say; None clears it.

        Like a random fault, an overridden answer does not consume a script step, so the
        container's story carries on after it (``slow:0.4:throttle`` x 50, then each script).
        """
        if step is None:
            self._account_overrides.pop(account, None)
            return
        if times is not None and times < 1:
            raise ConfigError("times must be >= 1")
        parsed = parse_step(step) if isinstance(step, str) else step
        self._account_overrides[account] = _AccountOverride(parsed, times)

    @property
    def account_overrides(self) -> dict[str, dict[str, Any]]:
        return {
            account: {"step": o.step.label, "remaining": o.remaining}
            for account, o in self._account_overrides.items()
        }

    def add_status_hook(self, hook: StatusHook) -> None:
        """Call ``hook`` synchronously for every status call, once its answer is decided and
        before any delay (a test can act while the answer is in flight)."""
        self._status_hooks.append(hook)

    def remove_status_hook(self, hook: StatusHook) -> None:
        if hook in self._status_hooks:
            self._status_hooks.remove(hook)

    def set_quota(self, user_id: str, **usage: int) -> None:
        """Set usage figures (`quota_usage`, `reply_quota_usage`...) for one user id."""
        for name, value in usage.items():
            if name not in QUOTA_TOTALS:
                raise ConfigError(f"unknown usage field {name!r}; known: {sorted(QUOTA_TOTALS)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer")
        self._usage_of(user_id).update(usage)

    def quota_of(self, user_id: str) -> dict[str, int]:
        return dict(self._usage_of(user_id))

    def _usage_of(self, user_id: str) -> dict[str, int]:
        return self._usage.setdefault(user_id, dict.fromkeys(QUOTA_TOTALS, 0))

    def set_ig_quota(
        self, user_id: str, *, quota_usage: int | None = None, quota_total: int | None = None
    ) -> None:
        """An Instagram user's limit: ``quota_usage`` is an offset added to the user's
        publishes of the last 24 h (so 0 forgets earlier settings, not real publishes), and
        ``quota_total`` the limit (100 by default; Meta's pages say 50 or 100)."""
        for name, value in (("quota_usage", quota_usage), ("quota_total", quota_total)):
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ConfigError(f"{name} must be a non-negative integer")
        quota = self._ig_quota.setdefault(user_id, _IgQuota())
        if quota_usage is not None:
            quota.offset = quota_usage
        if quota_total is not None:
            quota.total = quota_total

    def ig_quota_of(self, user_id: str) -> dict[str, int]:
        """What the admin API shows: usage (offset included), total, and their parts."""
        quota = self._ig_quota.get(user_id, _IgQuota())
        usage = quota.usage(self._clock())
        return {
            "quota_usage": usage,
            "quota_total": quota.total,
            "quota_duration": IG_QUOTA_DURATION,
            "offset": quota.offset,
            "published_24h": usage - quota.offset,
        }

    def set_publish_fault(
        self, container_id: str, fault: str | None, *, times: int | None = None
    ) -> None:
        """Fault for publish calls of one container; `times` limits how many calls it hits."""
        if fault is None:
            self._publish_faults.pop(container_id, None)
            return
        if fault not in PUBLISH_FAULTS:
            raise ConfigError(f"unknown publish fault {fault!r}; known: {list(PUBLISH_FAULTS)}")
        if times is not None and times < 1:
            raise ConfigError("times must be >= 1")
        self._publish_faults[container_id] = _PublishFaultSetting(cast(PublishFault, fault), times)

    def set_carousel(self, parent: str, children: Sequence[str] | None) -> None:
        """Make ``parent`` a carousel container of ``children`` (None: a plain container again).

        Publishing it then needs every child FINISHED as well as the parent itself (else
        24/4279009, as observed); it counts as one post. Status calls on the parent while a
        child is not FINISHED are counted (``early_parent_calls``): a client should not make
        them."""
        for child in self._carousels.pop(parent, ()):
            self._parent_of.pop(child, None)
        if children is None:
            return
        if not 2 <= len(children) <= 20 or parent in children:
            raise ConfigError("a carousel has 2 to 20 children, none of them the parent")
        self._carousels[parent] = tuple(children)
        for child in children:
            self._parent_of[child] = parent

    @property
    def carousels(self) -> dict[str, list[str]]:
        return {parent: list(children) for parent, children in self._carousels.items()}

    def set_reply(
        self, container_id: str, reply_to: str | None, *, settle_seconds: float = 0.0
    ) -> None:
        """Make a container a reply to ``reply_to`` (None: a post again). A reply's publish
        spends the reply quota (``reply_quota_usage``, 1000 / 24 h), not the post quota; one
        published less than ``settle_seconds`` after its first FINISHED answer goes out as a
        standalone post (``lost_reply_to``) and spends the post quota instead."""
        if reply_to is None:
            self._replies.pop(container_id, None)
            return
        if not 0.0 <= settle_seconds < float("inf"):
            raise ConfigError("settle_seconds must be >= 0")
        self._replies[container_id] = ReplySetting(reply_to, settle_seconds)

    @property
    def replies(self) -> dict[str, dict[str, Any]]:
        return {
            cid: {"reply_to": r.reply_to, "settle_seconds": r.settle_seconds}
            for cid, r in self._replies.items()
        }

    def set_usage_headers(self, headers: Mapping[str, object]) -> None:
        """Replace the usage headers sent with every API reply (values are JSON-encoded)."""
        for name in headers:
            if name not in USAGE_HEADERS:
                raise ConfigError(f"unknown usage header {name!r}; known: {list(USAGE_HEADERS)}")
        self._usage_headers = {
            name: json.dumps(value, separators=(",", ":"))
            for name, value in headers.items()
            if value is not None
        }

    @property
    def usage_headers(self) -> dict[str, str]:
        return dict(self._usage_headers)

    def set_tokens(
        self, *, valid: Mapping[str, str] | None = None, expired: Mapping[str, str] | None = None
    ) -> None:
        """Replace the token tables; with no valid token configured any token is accepted."""
        for token in [*(valid or {}), *(expired or {})]:
            if not token:
                raise ConfigError("empty token")
        self._valid_tokens = dict(valid or {})
        self._expired_tokens = dict(expired or {})

    def set_refresh(
        self,
        *,
        faults: Sequence[str | Step] = (),
        expires_in: int = REFRESH_EXPIRES_IN,
        token_expiry: Mapping[str, float] | None = None,
    ) -> None:
        """Script the next refresh answers (``faults``, one per call, then success), the
        ``expires_in`` of a success, and tokens' expiry times (clock seconds)."""
        self._refresh_faults = list(parse_steps(faults))
        self._refresh_expires_in = expires_in
        if token_expiry is not None:
            self._token_expiry = dict(token_expiry)

    @property
    def refresh_calls(self) -> int:
        return self._refresh_calls

    def handle_refresh(self, token: str | None, grant_type: str | None) -> Reply:
        """``GET /refresh_access_token?grant_type=th_refresh_token&access_token=...``: a new
        token for the same account, valid ``expires_in`` seconds. The old token stays valid
        until its own expiry (Meta does not say it is revoked). ``ig_refresh_token`` is
        Instagram's: same answer, same knobs, recorded as an Instagram call."""
        account, reply = self._refresh_reply(token, grant_type)
        return replace(reply, user_id=account)

    def _refresh_reply(self, token: str | None, grant_type: str | None) -> tuple[str, Reply]:
        now = self._clock()
        self._refresh_calls += 1
        platform = REFRESH_GRANT_TYPES.get(grant_type or "", "threads")
        account, auth_error = self._authenticate(token)
        if auth_error is not None:
            self._record(now, "refresh", "", account, auth_error.label, platform)
            return account, Reply(auth_error)
        if grant_type not in REFRESH_GRANT_TYPES:
            self._record(now, "refresh", "", account, BAD_GRANT_TYPE.label, platform)
            return account, Reply(BAD_GRANT_TYPE)
        # A scripted answer: slow (then success), or a fault; a status step means success.
        step: Step | None = self._refresh_faults.pop(0) if self._refresh_faults else None
        delay = 0.0
        while isinstance(step, SlowStep):
            delay += step.seconds
            step = step.then
        if step is not None and not isinstance(step, StatusStep):
            self._record(now, "refresh", "", account, step.label, platform)
            return account, Reply(step, delay)
        self._refreshed += 1
        new = f"refreshed-{self._refreshed}-{self._rng.getrandbits(48):012x}"
        if self._valid_tokens:
            self._valid_tokens[new] = account
        self._token_expiry[new] = now + self._refresh_expires_in
        self._record(now, "refresh", "", account, "ok", platform)
        return account, Reply(RefreshAnswer(new, self._refresh_expires_in), delay)

    def reset(self, *, rules: bool = False) -> None:
        """Forget cursors, publishes and the call log; also scripts and settings if `rules`."""
        self._refresh_calls = 0
        self._cursors.clear()
        self._published.clear()
        self._calls.clear()
        self._requests.clear()
        self._quota_calls = 0
        self._finished_at.clear()
        if rules:
            self._carousels.clear()
            self._parent_of.clear()
            self._replies.clear()
            self._rules.clear()
            self._default = parse_steps(["notfound"])
            self._publish_faults.clear()
            self._usage.clear()
            self._ig_quota.clear()
            self._usage_headers.clear()
            self._account_overrides.clear()
            self._fault_rate = 0.0

    # ----- call log ------------------------------------------------------------------------

    def calls_for(self, container_id: str) -> ContainerCalls:
        """A copy of one container's counters (zeros if it was never called)."""
        calls = self._calls.get(container_id, ContainerCalls())
        return ContainerCalls(
            calls.count,
            list(calls.times),
            list(calls.accounts),
            calls.publish_calls,
            calls.publishes,
            calls.early_parent_calls,
            calls.lost_reply_to,
            list(calls.platforms),
        )

    @property
    def requests(self) -> list[RequestRecord]:
        return list(self._requests)

    @property
    def quota_calls(self) -> int:
        return self._quota_calls

    @property
    def total_calls(self) -> int:
        return len(self._requests)

    def calls_summary(self) -> dict[str, Any]:
        return {
            "total": self.total_calls,
            "status_calls": sum(calls.count for calls in self._calls.values()),
            "publish_calls": sum(calls.publish_calls for calls in self._calls.values()),
            "quota_calls": self._quota_calls,
            "refresh_calls": self._refresh_calls,
            "by_platform": {
                platform: sum(1 for r in self._requests if r.platform == platform)
                for platform in PLATFORMS
            },
            "containers": {cid: calls.to_json() for cid, calls in self._calls.items()},
        }

    def _record(
        self,
        t: float,
        kind: RequestKind,
        object_id: str,
        account: str,
        answer: str,
        platform: Platform = "threads",
    ) -> None:
        self._requests.append(RequestRecord(t, kind, object_id, account, answer, platform))

    def _container_calls(self, container_id: str) -> ContainerCalls:
        return self._calls.setdefault(container_id, ContainerCalls())

    # ----- auth ----------------------------------------------------------------------------

    def _authenticate(self, token: str | None) -> tuple[str, GraphErrorStep | None]:
        """(account, error): the account is "" when the token maps to nobody."""
        if not token:
            return "", TOKEN_MISSING
        expired = self._expired_tokens.get(token)
        if expired is not None:
            return expired, TOKEN_EXPIRED
        expiry = self._token_expiry.get(token)
        if expiry is not None and self._clock() >= expiry:
            return self._valid_tokens.get(token, DEFAULT_ACCOUNT), TOKEN_EXPIRED
        if not self._valid_tokens:
            return DEFAULT_ACCOUNT, None
        account = self._valid_tokens.get(token)
        if account is None:
            return "", TOKEN_INVALID
        return account, None

    # ----- status calls --------------------------------------------------------------------

    def script_for(self, container_id: str) -> tuple[Step, ...]:
        """Exact rule, else the longest matching prefix rule, else the default script."""
        exact = self._rules.get(container_id)
        if exact is not None:
            return exact
        best: tuple[Step, ...] | None = None
        best_len = -1
        for key, steps in self._rules.items():
            if key.endswith("*"):
                prefix = key[:-1]
                if len(prefix) > best_len and container_id.startswith(prefix):
                    best, best_len = steps, len(prefix)
        return best if best is not None else self._default

    def handle_status(self, container_id: str, token: str | None) -> Reply:
        """A Threads status call (subclasses wrap this one: its signature stays)."""
        return self.handle_status_for("threads", container_id, token)

    def handle_status_for(
        self,
        platform: Platform,
        container_id: str,
        token: str | None,
        *,
        refuse: GraphErrorStep | None = None,
    ) -> Reply:
        """A status call on ``platform``'s route; the same script, faults and hooks serve both.
        ``refuse`` is a request error the route found (an unknown field): answered once the
        token passes, without consuming a script step."""
        now = self._clock()
        account, reply = self._status_reply(now, container_id, token, platform, refuse)
        if self._status_hooks:
            outcome = reply.outcome
            label = outcome.label if isinstance(outcome, FinalStep) else type(outcome).__name__
            call = StatusCall(now, container_id, account, label, reply.delay, platform)
            for hook in list(self._status_hooks):
                hook(call)
        return replace(reply, user_id=account)

    def _status_reply(
        self,
        now: float,
        container_id: str,
        token: str | None,
        platform: Platform,
        refuse: GraphErrorStep | None,
    ) -> tuple[str, Reply]:
        account, auth_error = self._authenticate(token)
        calls = self._container_calls(container_id)
        calls.count += 1
        calls.times.append(now)
        calls.accounts.append(account)
        calls.platforms.append(platform)

        def record(answer: str) -> None:
            self._record(now, "status", container_id, account, answer, platform)

        if auth_error is not None:
            record(auth_error.label)
            return account, Reply(auth_error)
        if refuse is not None:
            record(refuse.label)
            return account, Reply(refuse)
        override = self._account_overrides.get(account)
        if override is not None:
            if override.remaining is not None:
                override.remaining -= 1
                if override.remaining <= 0:
                    self._account_overrides.pop(account, None)
            delay, final = self._resolve(override.step, self._cursor(container_id))
            record(final.label)
            return account, Reply(final, delay)
        delay = 0.0
        random_fault = self._draw_random_fault()
        if isinstance(random_fault, _RandomSlow):
            delay = self._slow_seconds if random_fault.seconds is None else random_fault.seconds
        elif random_fault is not None:
            # Not consuming a step keeps the scripted outcome reachable whatever the dice say.
            delay, final = self._resolve(random_fault, self._cursor(container_id))
            record(final.label)
            return account, Reply(final, delay)
        if self._children_not_finished(container_id):
            calls.early_parent_calls += 1
        extra, final = self._consume(container_id)
        if isinstance(final, StatusStep) and final.status == "FINISHED":
            self._finished_at.setdefault(container_id, now)
        record(final.label)
        return account, Reply(final, delay + extra)

    def _children_not_finished(self, container_id: str) -> list[str]:
        """A carousel's children whose state is not FINISHED (none for other containers)."""
        out = []
        for child in self._carousels.get(container_id, ()):
            status = self.current_status(child)
            if status is None or status.status != "FINISHED":
                out.append(child)
        return out

    def _draw_random_fault(self) -> Step | _RandomSlow | None:
        # No draw at rate 0, so that enabling faults later starts from the seeded sequence.
        if self._fault_rate <= 0 or self._rng.random() >= self._fault_rate:
            return None
        return self._rng.choice(self._fault_kinds)

    def _cursor(self, container_id: str) -> _Cursor:
        return self._cursors.setdefault(container_id, _Cursor())

    def _consume(self, container_id: str) -> tuple[float, FinalStep]:
        cursor = self._cursor(container_id)
        if container_id in self._published:
            cursor.last_status = PUBLISHED
            return 0.0, PUBLISHED
        script = self.script_for(container_id)
        index = min(cursor.index, len(script) - 1)
        cursor.index = min(index + 1, len(script) - 1)
        return self._resolve(script[index], cursor)

    def _resolve(self, step: Step, cursor: _Cursor) -> tuple[float, FinalStep]:
        """Unwrap slow steps into (total delay, final step) and remember produced statuses."""
        delay = 0.0
        current: Step | None = step
        while isinstance(current, SlowStep):
            delay += current.seconds
            current = current.then
        if current is None:
            current = cursor.last_status or IN_PROGRESS
        if isinstance(current, StatusStep):
            cursor.last_status = current
        return delay, current

    def current_status(self, container_id: str) -> StatusStep | None:
        """The container's state as publish sees it, without consuming anything.

        That is the last status the script produced, else the first status the script would
        produce from its cursor (faults are skipped: they are transport noise, not states).
        """
        if container_id in self._published:
            return PUBLISHED
        cursor = self._cursors.get(container_id)
        if cursor is not None and cursor.last_status is not None:
            return cursor.last_status
        script = self.script_for(container_id)
        start = min(cursor.index if cursor else 0, len(script) - 1)
        for step in script[start:]:
            current: Step | None = step
            while isinstance(current, SlowStep):
                current = current.then
            if current is None:
                return IN_PROGRESS
            if isinstance(current, StatusStep):
                return current
        return None

    # ----- quota ---------------------------------------------------------------------------

    def handle_quota(
        self, user_id: str, token: str | None, *, platform: Platform = "threads"
    ) -> Reply:
        now = self._clock()
        account, auth_error = self._authenticate(token)
        self._quota_calls += 1
        user = account if user_id == "me" else user_id
        if auth_error is not None:
            self._record(now, "quota", user_id, account, auth_error.label, platform)
            return Reply(auth_error, user_id=user)
        self._record(now, "quota", user_id, account, "ok", platform)
        if platform == "instagram":
            quota = self._ig_quota.get(user, _IgQuota())
            snapshot = QuotaSnapshot({"quota_usage": quota.usage(now)}, quota.total)
            return Reply(snapshot, user_id=user)
        return Reply(QuotaSnapshot(self.quota_of(user)), user_id=user)

    # ----- publish -------------------------------------------------------------------------

    def handle_publish(
        self,
        user_id: str,
        creation_id: str | None,
        token: str | None,
        *,
        platform: Platform = "threads",
    ) -> Reply:
        """``threads_publish`` or Instagram's ``media_publish``: one publish per container,
        whatever the route; the quota, carousel size and refusals differ per platform."""
        account, reply = self._publish_reply(user_id, creation_id, token, platform)
        return replace(reply, user_id=account if user_id == "me" else user_id)

    def _publish_reply(
        self, user_id: str, creation_id: str | None, token: str | None, platform: Platform
    ) -> tuple[str, Reply]:
        now = self._clock()
        account, auth_error = self._authenticate(token)
        container_id = creation_id or ""

        def record(answer: str) -> None:
            self._record(now, "publish", container_id, account, answer, platform)

        calls = self._container_calls(container_id) if creation_id else None
        if calls is not None:
            calls.publish_calls += 1
        if auth_error is not None:
            record(auth_error.label)
            return account, Reply(auth_error)
        if calls is None:
            record(MISSING_CREATION_ID.label)
            return account, Reply(MISSING_CREATION_ID)
        fault = self._publish_faults.get(container_id)
        refusal = _PUBLISH_REFUSALS.get(fault.fault) if fault is not None else None
        if fault is not None and refusal is not None:
            # Refused: nothing goes out. "not_ready" is seen on the real API: FINISHED, yet
            # publishing at once answers "Media Not Found".
            self._spend(container_id, fault)
            record(refusal.label)
            return account, Reply(refusal)
        user = account if user_id == "me" else user_id
        refused = self._publish_limit(container_id, user, platform, now)
        if refused is not None:
            record(refused.label)
            return account, Reply(refused)
        status = self.current_status(container_id)
        if (
            status is None
            or status.status != "FINISHED"
            or self._children_not_finished(container_id)
        ):
            # Observed: a carousel whose children (or itself) are not FINISHED answers this.
            record(MEDIA_NOT_READY.label)
            return account, Reply(MEDIA_NOT_READY)
        self._media_counter += 1
        media_id = str(18_000_000_000_000_000 + self._media_counter)
        self._published[container_id] = media_id
        calls.publishes += 1
        if platform == "instagram":
            self._ig_quota.setdefault(user, _IgQuota()).published.append(now)
        else:
            reply = self._replies.get(container_id)
            finished = self._finished_at.get(container_id)
            if reply is not None and (finished is None or now - finished < reply.settle_seconds):
                calls.lost_reply_to += 1
                reply = None  # it went out as a standalone post
            usage = self._usage_of(user)
            usage["reply_quota_usage" if reply is not None else "quota_usage"] += 1
        if fault is None:
            record("published")
            return account, Reply(Published(media_id))
        self._spend(container_id, fault)
        record(fault.fault)
        if fault.fault == "500_after_publish":
            return account, Reply(SERVER_ERROR)
        if fault.fault == "code10_after_publish":
            return account, Reply(PERMISSION_AFTER_PUBLISH)
        if fault.fault == "noid_after_publish":
            return account, Reply(NO_ID_REPLY)
        return account, Reply(Published(media_id), self._slow_seconds)

    def _publish_limit(
        self, container_id: str, user: str, platform: Platform, now: float
    ) -> GraphErrorStep | None:
        """The platform's refusal of a publish before readiness is looked at: a spent quota
        (Threads: posts or replies; Instagram: posts), an Instagram carousel over 10."""
        if platform == "instagram":
            quota = self._ig_quota.get(user, _IgQuota())
            if quota.usage(now) >= quota.total:
                return IG_DAILY_LIMIT
            if len(self._carousels.get(container_id, ())) > IG_MAX_CAROUSEL_CHILDREN:
                # Threads takes up to 20 children (set_carousel's bound), Instagram 10.
                return IG_CAROUSEL_TOO_MANY
            return None
        usage = self._usage_of(user)
        if container_id in self._replies:
            return REPLY_QUOTA_EXCEEDED if usage["reply_quota_usage"] >= REPLY_QUOTA_TOTAL else None
        return QUOTA_EXCEEDED if usage["quota_usage"] >= POST_QUOTA_TOTAL else None

    def published_media_id(self, container_id: str) -> str | None:
        return self._published.get(container_id)

    def _spend(self, container_id: str, fault: _PublishFaultSetting) -> None:
        if fault.remaining is None:
            return
        fault.remaining -= 1
        if fault.remaining <= 0:
            self._publish_faults.pop(container_id, None)
