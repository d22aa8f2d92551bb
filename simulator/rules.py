"""The simulator's settings (``SimulatorRules``): scripts, random faults, account overrides,
quota, publish faults, carousels, replies, usage headers, tokens and their refresh, each set
through a method that refuses what it cannot use (``ConfigError``). The decisions taken with
them: ``simulator.state``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from simulator.instagram import IG_QUOTA_DURATION
from simulator.records import (
    DEFAULT_ACCOUNT,
    DEFAULT_FAULT_KINDS,
    DEFAULT_SLOW_SECONDS,
    PUBLISH_FAULTS,
    QUOTA_TOTALS,
    REFRESH_EXPIRES_IN,
    USAGE_HEADERS,
    AccountOverride,
    ConfigError,
    ContainerCalls,
    Cursor,
    IgQuota,
    PublishFault,
    PublishFaultSetting,
    RandomSlow,
    ReplySetting,
    RequestRecord,
    StatusHook,
)
from simulator.steps import (
    MAX_SLOW_SECONDS,
    SlowStep,
    StatusStep,
    Step,
    StepError,
    parse_step,
    parse_steps,
)


def _parse_token_spec(spec: str) -> tuple[str, str]:
    token, _, user_id = spec.partition("=")
    if not token:
        raise ConfigError("empty token")
    return token, user_id or DEFAULT_ACCOUNT


def parse_token_specs(specs: Iterable[str]) -> dict[str, str]:
    """`TOKEN[=USER_ID]` strings, as given on the command line, to a token -> user id map."""
    return dict(_parse_token_spec(spec) for spec in specs)


class SimulatorRules:
    """The settings of one simulated Graph API, and the fields of all its state (its cursors and
    call log too, which ``SimulatorState`` keeps and a re-script resets)."""

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
        self._fault_kinds: tuple[Step | RandomSlow, ...] = ()
        self._fault_kind_names: tuple[str, ...] = ()
        self._slow_seconds = DEFAULT_SLOW_SECONDS
        self._rng = random.Random(seed)
        self._valid_tokens: dict[str, str] = {}
        self._expired_tokens: dict[str, str] = {}
        self._usage: dict[str, dict[str, int]] = {}
        self._ig_quota: dict[str, IgQuota] = {}
        self._publish_faults: dict[str, PublishFaultSetting] = {}
        self._usage_headers: dict[str, str] = {}
        self._cursors: dict[str, Cursor] = {}
        self._published: dict[str, str] = {}
        self._media_counter = 0
        self._calls: dict[str, ContainerCalls] = {}
        self._requests: list[RequestRecord] = []
        self._quota_calls = 0
        self._account_overrides: dict[str, AccountOverride] = {}
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
    def _parse_fault_kind(kind: str) -> Step | RandomSlow:
        # "slow" alone delays a normal answer; "slow:<s>" does so with its own delay.
        if kind == "slow":
            return RandomSlow(None)
        try:
            step = parse_step(kind)
        except StepError as exc:
            raise ConfigError(f"unknown fault kind {kind!r}") from exc
        if isinstance(step, SlowStep) and step.then is None:
            return RandomSlow(step.seconds)
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
        self._account_overrides[account] = AccountOverride(parsed, times)

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
        quota = self._ig_quota.setdefault(user_id, IgQuota())
        if quota_usage is not None:
            quota.offset = quota_usage
        if quota_total is not None:
            quota.total = quota_total

    def ig_quota_of(self, user_id: str) -> dict[str, int]:
        """What the admin API shows: usage (offset included), total, and their parts."""
        quota = self._ig_quota.get(user_id, IgQuota())
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
        self._publish_faults[container_id] = PublishFaultSetting(cast(PublishFault, fault), times)

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
