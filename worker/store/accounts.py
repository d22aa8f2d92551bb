"""Per-account state shared by every worker: throttling back-off, request pacing, rejected
tokens, and the cached publishing quota.

Keys (documented in the README):
    {prefix}:account:{account}   hash: throttled_until, throttle_level, throttled_total,
                                 last_throttle_code, last_throttled_at, token_rejected_fp,
                                 token_rejected_reason, token_rejected_code, token_rejected_at,
                                 token_fp, token_prev_fp, token_seen_at, token_expires_at,
                                 token_issued_at, token_refreshed_at, token_refreshes,
                                 token_refresh_failures, token_refresh_retry_at,
                                 token_refresh_error, token_refresh_failed_at (lua/token.lua)
    {prefix}:token:lease:{account}  string (PX): "<owner>|<fence>", the worker refreshing
    {prefix}:token:fence:{account}  string: the refresh leases' fence counter
    {prefix}:rate:{account}:runs sorted set: the pacing calendar, runs of taken slots (lib.lua)
    {prefix}:quota:{account}     string: JSON of the last publishing limit read
    {prefix}:accounts            sorted set: accounts seen at enqueue, by last time seen
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from api_client.models import QuotaSnapshot
from worker.store import scripts
from worker.store.keys import Keys
from worker.store.queue import AccountState, ClaimedJob, text

__all__ = [
    "ACCOUNT_TTL_SECONDS",
    "AccountChange",
    "AccountState",
    "AccountStore",
    "RefreshLease",
    "TokenRecord",
]

ACCOUNT_TTL_SECONDS = 7 * 86400


@dataclass(frozen=True, slots=True)
class AccountChange:
    """What account.lua did: the pause now in force (s, Redis time; 0: none), the back-off
    level, and whether this call changed it (a new step, a cleared pause, a newly rejected
    token). ``stale``: the run no longer owned its job, nothing was written."""

    paused_until: float = 0.0
    level: int = 0
    changed: bool = False
    stale: bool = False


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What Redis knows of an account's current token after a sync (times: Unix s, Redis')."""

    now: float
    seen_at: float | None
    expires_at: float | None
    issued_at: float | None
    failures: int
    retry_at: float
    rejected: bool


@dataclass(frozen=True, slots=True)
class RefreshLease:
    """A refresh lease held: its owner and fence number (only the latest may write back)."""

    account: str
    owner: str
    fence: str
    now: float


def _opt(value: Any) -> float | None:
    t = text(value)
    return float(t) if t else None


class AccountStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._account = scripts.register(redis, "account.lua")
        self._token = scripts.register(redis, "token.lua")

    async def load(self, account: str) -> AccountState:
        raw = await self.redis.hmget(  # type: ignore[misc]
            self.keys.account(account),
            ["throttled_until", "throttle_level", "token_rejected_fp", "token_rejected_reason"],
        )
        return AccountState.from_reply(raw)

    async def _change(
        self, job: ClaimedJob, account: str, action: str, sent_ms: int, *rest: str | int | float
    ) -> AccountChange:
        reply = await self._account(
            keys=[self.keys.account(account), self.keys.job_lock(job.job_id)],
            args=[job.token, action, sent_ms, ACCOUNT_TTL_SECONDS, *rest],
        )
        if text(reply[0]) != "ok":
            return AccountChange(stale=True)
        return AccountChange(int(reply[1]) / 1000, int(reply[2]), text(reply[3]) == "1")

    async def note_throttle(
        self,
        job: ClaimedJob,
        account: str,
        *,
        sent_ms: int,
        base: float,
        cap: float,
        at_least_ms: int,
        code: str,
    ) -> AccountChange:
        """A throttled answer to a request sent at ``sent_ms`` (Redis time)."""
        return await self._change(job, account, "throttle", sent_ms, base, cap, at_least_ms, code)

    async def clear_throttle(self, job: ClaimedJob, account: str, *, sent_ms: int) -> AccountChange:
        """A good answer to a request sent at ``sent_ms``: ends a pause that ended before it."""
        return await self._change(job, account, "clear", sent_ms)

    async def reject_token(
        self, job: ClaimedJob, account: str, fp: str, reason: str, code: str
    ) -> bool:
        """Remember that this token (by fingerprint) was rejected. True the first time only."""
        change = await self._change(job, account, "reject", 0, fp, reason, code)
        return change.changed

    # ----- token lifecycle (lua/token.lua) ----------------------------------------------------

    async def _token_call(self, account: str, action: str, *args: str | int | float) -> Any:
        k = self.keys
        return await self._token(
            keys=[k.account(account), k.token_lease(account), k.token_fence(account)],
            args=[action, ACCOUNT_TTL_SECONDS, *args],
        )

    async def sync_token(
        self, account: str, fp: str, *, expires_at: float | None, issued_at: float | None
    ) -> TokenRecord | None:
        """Publish the account's current token (fingerprint, expiry from the file); clears a
        rejection of a previous token. None: the caller's file predates a refresh's write."""
        reply = await self._token_call(
            account,
            "sync",
            fp,
            "" if expires_at is None else f"{expires_at:.3f}",
            "" if issued_at is None else f"{issued_at:.3f}",
        )
        if text(reply[0]) != "ok":
            return None
        _, now_ms, seen, expires, issued, failures, retry, rejected = reply
        return TokenRecord(
            now=int(now_ms) / 1000,
            seen_at=_opt(seen),
            expires_at=_opt(expires),
            issued_at=_opt(issued),
            failures=int(text(failures) or 0),
            retry_at=_opt(retry) or 0.0,
            rejected=text(rejected) == "1",
        )

    async def acquire_refresh(
        self, account: str, fp: str, *, owner: str, lease_ms: int
    ) -> RefreshLease | str:
        """The refresh lease for this token, or why not: ``moved`` (another token is current:
        refreshed already), ``held`` (another worker is refreshing it)."""
        reply = await self._token_call(account, "acquire", owner, lease_ms, fp)
        if text(reply[0]) != "ok":
            return text(reply[0])
        return RefreshLease(account, owner, text(reply[1]), int(reply[2]) / 1000)

    async def guard_refresh(self, lease: RefreshLease, *, lease_ms: int) -> float | None:
        """Still the latest lease holder: extends it and returns Redis' time; None: fenced."""
        reply = await self._token_call(lease.account, "guard", lease.owner, lease.fence, lease_ms)
        return int(reply[1]) / 1000 if text(reply[0]) == "ok" else None

    async def commit_refresh(
        self, lease: RefreshLease, fp: str, *, expires_at: float, issued_at: float
    ) -> bool:
        reply = await self._token_call(
            lease.account,
            "commit",
            lease.owner,
            lease.fence,
            fp,
            f"{expires_at:.3f}",
            f"{issued_at:.3f}",
        )
        return text(reply[0]) == "ok"

    async def fail_refresh(
        self,
        lease: RefreshLease,
        reason: str,
        *,
        base: float,
        cap: float,
        rejected_fp: str | None = None,
        code: str = "",
    ) -> float | None:
        """A failed refresh: counts it, sets the retry time; returns it (None: fenced)."""
        reply = await self._token_call(
            lease.account,
            "fail",
            lease.owner,
            lease.fence,
            reason[:500],
            base,
            cap,
            "1" if rejected_fp else "0",
            rejected_fp or "",
            code,
        )
        return int(reply[2]) / 1000 if text(reply[0]) == "ok" else None

    async def save_quota(self, snapshot: QuotaSnapshot, ttl_seconds: int) -> None:
        await self.redis.set(
            self.keys.quota(snapshot.user_id), snapshot.model_dump_json(), ex=ttl_seconds
        )

    async def load_quota(self, user_id: str) -> QuotaSnapshot | None:
        raw = await self.redis.get(self.keys.quota(user_id))
        return QuotaSnapshot.model_validate_json(raw) if raw else None

    async def active_accounts(self, since: float) -> list[str]:
        ids = await self.redis.zrangebyscore(self.keys.accounts, since, "+inf")
        return [text(i) for i in ids]
