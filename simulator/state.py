"""Everything the simulator remembers, and the decisions it takes, without any HTTP.

``SimulatorState`` is the settings (``simulator.rules``, ``SimulatorRules``) and the decisions
taken with them (here); what both are made of: ``simulator.records``.
The handlers in `app.py` only translate between HTTP and the methods here, so that each rule
(script progression, random faults, publish readiness, quota, auth) lives in one place and can
be read without knowing aiohttp. Every decision is taken and logged synchronously, before any
sleep, so the call log reflects the moment a request arrived even if the client gives up.

Threads and Instagram share every rule here (a container's script, cursor and publish do not
depend on the route that polls it); what differs is passed in as the request's platform: the
publish quota and carousel size, Instagram's refusals, and the platform each call is logged with.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from simulator.instagram import (
    IG_CAROUSEL_TOO_MANY,
    IG_DAILY_LIMIT,
    IG_MAX_CAROUSEL_CHILDREN,
)
from simulator.records import (
    BAD_GRANT_TYPE,
    DEFAULT_ACCOUNT,
    IN_PROGRESS,
    PLATFORMS,
    POST_QUOTA_TOTAL,
    PUBLISH_REFUSALS,
    PUBLISHED,
    REFRESH_GRANT_TYPES,
    REPLY_QUOTA_TOTAL,
    ContainerCalls,
    Cursor,
    IgQuota,
    Platform,
    Published,
    PublishFaultSetting,
    QuotaSnapshot,
    RandomSlow,
    RefreshAnswer,
    Reply,
    RequestKind,
    RequestRecord,
    StatusCall,
)
from simulator.rules import SimulatorRules
from simulator.steps import (
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
    parse_steps,
)


class SimulatorState(SimulatorRules):
    """Scripts, cursors, faults, quota, tokens and the call log of one simulated Graph API."""

    # ----- token refresh -------------------------------------------------------------------

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
        if isinstance(random_fault, RandomSlow):
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

    def _draw_random_fault(self) -> Step | RandomSlow | None:
        # No draw at rate 0, so that enabling faults later starts from the seeded sequence.
        if self._fault_rate <= 0 or self._rng.random() >= self._fault_rate:
            return None
        return self._rng.choice(self._fault_kinds)

    def _cursor(self, container_id: str) -> Cursor:
        return self._cursors.setdefault(container_id, Cursor())

    def _consume(self, container_id: str) -> tuple[float, FinalStep]:
        cursor = self._cursor(container_id)
        if container_id in self._published:
            cursor.last_status = PUBLISHED
            return 0.0, PUBLISHED
        script = self.script_for(container_id)
        index = min(cursor.index, len(script) - 1)
        cursor.index = min(index + 1, len(script) - 1)
        return self._resolve(script[index], cursor)

    def _resolve(self, step: Step, cursor: Cursor) -> tuple[float, FinalStep]:
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
            quota = self._ig_quota.get(user, IgQuota())
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
        refusal = PUBLISH_REFUSALS.get(fault.fault) if fault is not None else None
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
            self._ig_quota.setdefault(user, IgQuota()).published.append(now)
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
            quota = self._ig_quota.get(user, IgQuota())
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

    def _spend(self, container_id: str, fault: PublishFaultSetting) -> None:
        if fault.remaining is None:
            return
        fault.remaining -= 1
        if fault.remaining <= 0:
            self._publish_faults.pop(container_id, None)
