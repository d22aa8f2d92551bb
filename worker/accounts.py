"""Per-account state shared by every worker: throttling back-off, request pacing, rejected
tokens, and the cached publishing quota.

Keys (documented in the README):
    {prefix}:account:{account}   hash: throttled_until, throttle_level, throttled_total,
                                 last_throttle_code, last_throttled_at, token_rejected_fp,
                                 token_rejected_reason, token_rejected_code, token_rejected_at
    {prefix}:rate:{account}      string: pacing state of the request rate cap (begin_check.lua)
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
from worker.store import PollResult

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


@dataclass(frozen=True, slots=True)
class CheckStart:
    """What ``begin_check`` read: the container, its account's state, the pacing wait."""

    result: PollResult | None
    account: AccountState
    pace_wait: float


class AccountStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._throttle = redis.register_script(_script("throttle.lua"))
        self._begin = redis.register_script(_script("begin_check.lua"))

    async def begin_check(
        self, container_id: str, generation: str, *, per_second: float, max_wait: float
    ) -> CheckStart:
        """One round trip for everything a check reads before calling the API."""
        reply = await self._begin(
            keys=[self.keys.result(container_id)],
            args=[
                generation,
                self.keys.prefix,
                1.0 / per_second if per_second > 0 else 0,
                max_wait,
            ],
        )
        flat, until, level, fp, reason, wait = reply
        pairs = dict(zip(flat[::2], flat[1::2], strict=True))
        return CheckStart(
            PollResult.from_hash(pairs) if pairs else None,
            AccountState(
                float(_text(until) or 0), int(_text(level) or 0), _text(fp), _text(reason)
            ),
            float(_text(wait) or 0),
        )

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
