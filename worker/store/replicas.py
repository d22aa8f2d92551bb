"""How many Redis replicas must hold a publish claim before the publish call goes out.

Redis replicates asynchronously: a claim written to the primary can be lost if the primary dies
before a replica received it and that replica is promoted (Sentinel, or by hand). The poll would
then be "FINISHED, publish pending" again, and a second run would publish it a second time. So
the claim and ``WAIT n timeout`` go out together on one connection (``ResultStore.claim_publish``)
and the call is made only when ``n`` replicas acknowledged it.

``n`` is ``PUBLISH_WAIT_REPLICAS`` when set. Otherwise it is learned: the most replicas the
primary reported connected (``INFO replication``) within the last ``MEMORY_SECONDS``, remembered
in Redis (``{prefix}:config``, fields ``replicas`` and ``replicas_seen_at``, Redis' clock) so
that every worker, a newly started one included, knows a replica exists while it is cut off (a
partition: the replica most likely to miss the claim). One removed for good stops counting after
``MEMORY_SECONDS``. A deployment never seen with its replica connected waits for none: set
``PUBLISH_WAIT_REPLICAS`` where the number is known.
"""

from __future__ import annotations

from redis.asyncio import Redis

from worker.store.keys import Keys

MEMORY_SECONDS = 300.0


def remembered(connected: int, stored: int, seen_at: float, now: float) -> tuple[int, bool]:
    """How many replicas to wait for, and whether to store ``connected`` as the new memory.
    Pure."""
    if connected >= stored or now - seen_at > MEMORY_SECONDS:
        return connected, True
    return stored, False


class Replicas:
    def __init__(self, redis: Redis, keys: Keys, *, fixed: int | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.fixed = fixed

    async def needed(self) -> int:
        if self.fixed is not None:
            return self.fixed
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.info("replication")
            pipe.hmget(self.keys.config, ["replicas", "replicas_seen_at"])
            pipe.time()
            info, (stored, seen_at), (seconds, micros) = await pipe.execute()
        connected = int(info.get("connected_slaves", 0) or 0)
        now = float(seconds) + float(micros) / 1e6
        need, store = remembered(connected, int(stored or 0), float(seen_at or 0.0), now)
        if store and connected > 0:
            await self.redis.hset(  # type: ignore[misc]
                self.keys.config,
                mapping={"replicas": connected, "replicas_seen_at": f"{now:.3f}"},
            )
        return need
