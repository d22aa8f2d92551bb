"""Reading a container's history (``{prefix}:history:{id}``; written by the Lua scripts, see
``worker.core.history`` for the format and ``lib.lua``'s ``history`` for the writes)."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.core.history import HistoryEvent, parse_history
from worker.store.keys import Keys


async def read_history(redis: Redis, keys: Keys, container_id: str) -> list[HistoryEvent]:
    """The container's events, oldest first; [] when it has none (never enqueued, or expired
    with its result). One GET; ``container_id`` must be validated by the caller."""
    return parse_history(await redis.get(keys.history(container_id)))
