"""Console sessions on the server side: the nonce of each open session, until logout or expiry.

A session cookie is signed with the API key it was opened with (``worker.web.access``), so any
replica can verify it; this key (``{prefix}:session:<nonce>``) is what makes it revocable: logout
deletes it, and a cookie whose nonce is gone is refused, a copy of it included.
"""

from __future__ import annotations

from redis.asyncio import Redis

from worker.store.keys import Keys


class SessionStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.prefix = keys.prefix

    def _key(self, nonce: str) -> str:
        return f"{self.prefix}:session:{nonce}"

    async def open(self, nonce: str, *, seconds: float) -> None:
        await self.redis.set(self._key(nonce), "1", ex=max(1, int(seconds)))

    async def alive(self, nonce: str) -> bool:
        return bool(await self.redis.exists(self._key(nonce)))

    async def close(self, nonce: str) -> None:
        await self.redis.delete(self._key(nonce))
