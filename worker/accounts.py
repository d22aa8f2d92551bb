"""Per-account state shared by every worker: throttling back-off, request pacing, rejected
tokens, and the cached publishing quota.

Keys (documented in the README):
    {prefix}:account:{account}   hash: throttled_until, throttle_level, throttled_total,
                                 last_throttle_code, last_throttled_at, token_rejected_fp,
                                 token_rejected_reason, token_rejected_code, token_rejected_at
    {prefix}:rate:{account}      string: pacing state of the request rate cap
    {prefix}:quota:{account}     string: JSON of the last publishing limit read
    {prefix}:accounts            sorted set: accounts seen at enqueue, by last time seen
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis

from api_client.models import QuotaSnapshot
from worker.keys import Keys

ACCOUNT_TTL_SECONDS = 7 * 86400


def _script(name: str) -> str:
    return resources.files("worker").joinpath("lua", name).read_text(encoding="utf-8")


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class AccountState:
    throttled_until: float = 0.0
    throttle_level: int = 0
    token_rejected_fp: str = ""
    token_rejected_reason: str = ""


class AccountStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._throttle = redis.register_script(_script("throttle.lua"))
        self._rate = redis.register_script(_script("rate.lua"))

    async def load(self, account: str) -> AccountState:
        raw = await self.redis.hmget(  # type: ignore[misc]
            self.keys.account(account),
            ["throttled_until", "throttle_level", "token_rejected_fp", "token_rejected_reason"],
        )
        until, level, fp, reason = (_text(v) for v in raw)
        return AccountState(float(until or 0), int(level or 0), fp, reason)

    async def note_throttle(
        self, account: str, *, now: float, base: float, cap: float, at_least: float, code: str
    ) -> float:
        """Record a throttled answer; returns until when the account's checks pause."""
        reply = await self._throttle(
            keys=[self.keys.account(account)],
            args=[repr(now), base, cap, repr(at_least), code, ACCOUNT_TTL_SECONDS],
        )
        return float(_text(reply))

    async def clear_throttle(self, account: str) -> None:
        await self.redis.hset(  # type: ignore[misc]
            self.keys.account(account), mapping={"throttle_level": 0, "throttled_until": 0}
        )

    async def reject_token(self, account: str, fp: str, reason: str, code: str) -> bool:
        """Remember that this token (by fingerprint) was rejected. True the first time only."""
        key = self.keys.account(account)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hget(key, "token_rejected_fp")
            tx.hset(
                key,
                mapping={
                    "token_rejected_fp": fp,
                    "token_rejected_reason": reason,
                    "token_rejected_code": code,
                    "token_rejected_at": repr(time.time()),
                },
            )
            tx.expire(key, ACCOUNT_TTL_SECONDS)
            previous, _, _ = await tx.execute()
        return _text(previous) != fp

    async def pace(self, account: str, *, per_second: float, max_wait: float) -> float:
        """Seconds to wait before this account's next request may go (0: go now)."""
        if per_second <= 0:
            return 0.0
        reply = await self._rate(keys=[self.keys.rate(account)], args=[1.0 / per_second, max_wait])
        return float(_text(reply))

    async def save_quota(self, snapshot: QuotaSnapshot, ttl_seconds: int) -> None:
        await self.redis.set(
            self.keys.quota(snapshot.user_id), snapshot.model_dump_json(), ex=ttl_seconds
        )

    async def load_quota(self, user_id: str) -> QuotaSnapshot | None:
        raw = await self.redis.get(self.keys.quota(user_id))
        return QuotaSnapshot.model_validate_json(raw) if raw else None

    async def active_accounts(self, since: float) -> list[str]:
        ids = await self.redis.zrangebyscore(self.keys.accounts, since, "+inf")
        return [_text(i) for i in ids]
