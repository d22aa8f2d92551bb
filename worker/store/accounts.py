"""Per-account state shared by every worker: throttling back-off, request pacing, rejected
tokens, and the cached publishing quota.

Keys (documented in the README):
    {prefix}:account:{account}   hash: throttled_until, throttle_level, throttled_total,
                                 last_throttle_code, last_throttled_at, token_rejected_fp,
                                 token_rejected_reason, token_rejected_code, token_rejected_at
    {prefix}:rate:{account}:runs sorted set: the pacing calendar, runs of taken slots (lib.lua)
    {prefix}:quota:{account}     string: JSON of the last publishing limit read
    {prefix}:accounts            sorted set: accounts seen at enqueue, by last time seen
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from api_client.models import QuotaSnapshot
from worker.store import scripts
from worker.store.keys import ARQ_IN_PROGRESS_PREFIX, Keys
from worker.store.queue import AccountState, ClaimedJob, text

__all__ = ["ACCOUNT_TTL_SECONDS", "AccountChange", "AccountState", "AccountStore"]

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


class AccountStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._account = scripts.register(redis, "account.lua")

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
            keys=[self.keys.account(account), ARQ_IN_PROGRESS_PREFIX + job.job_id],
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
