"""How many Redis replicas must hold a publish claim before the publish call goes out.

Redis replicates asynchronously: a claim written to the primary can be lost if the primary dies
before a replica received it and that replica is promoted (Sentinel, or by hand). The poll would
then be "FINISHED, publish pending" again, and a second run would publish it a second time. So
the claim and ``WAIT n timeout`` go out together on one connection (``ResultStore.claim_publish``)
and the call is made only when ``n`` replicas acknowledged it.

``n`` is ``PUBLISH_WAIT_REPLICAS`` when set, else the most replicas the primary reported
connected (``INFO replication``) over the last ``MEMORY_SECONDS``: a replica that drops off for
a moment (a partition: the one most likely to miss the claim) still counts, one removed for good
stops counting after a few minutes.
"""

from __future__ import annotations

import time
from collections import deque

from redis.asyncio import Redis

MEMORY_SECONDS = 300.0


class Replicas:
    def __init__(self, redis: Redis, *, fixed: int | None = None) -> None:
        self.redis = redis
        self.fixed = fixed
        self._seen: deque[tuple[float, int]] = deque()

    def remember(self, connected: int, *, at: float | None = None) -> int:
        """Note a reading; the most seen within MEMORY_SECONDS (this reading included)."""
        now = time.monotonic() if at is None else at
        self._seen.append((now, connected))
        while self._seen and self._seen[0][0] < now - MEMORY_SECONDS:
            self._seen.popleft()
        return max(n for _, n in self._seen)

    async def needed(self) -> int:
        if self.fixed is not None:
            return self.fixed
        info = await self.redis.info("replication")
        return self.remember(int(info.get("connected_slaves", 0) or 0))
