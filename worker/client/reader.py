"""The reader's module functions: ``PollerClient.from_settings(settings, redis)`` per call.

``settings`` is required: library code never reads the environment.
"""

from __future__ import annotations

from redis.asyncio import Redis

from config import Settings
from worker.client.client import PollerClient
from worker.core.history import HistoryEvent
from worker.core.result import PollResult


async def get_result(redis: Redis, container_id: str, *, settings: Settings) -> PollResult | None:
    """The stored state, or None when the id was never enqueued (or its result expired)."""
    return await PollerClient.from_settings(settings, redis).get(container_id)


async def get_history(redis: Redis, container_id: str, *, settings: Settings) -> list[HistoryEvent]:
    """The container's history, oldest first ([] when it has none): ``PollerClient.history``."""
    return await PollerClient.from_settings(settings, redis).history(container_id)


async def wait_for(
    redis: Redis,
    container_id: str,
    timeout: float,  # noqa: ASYNC109 - the documented API: wait_for(id, timeout)
    *,
    settings: Settings,
) -> PollResult | None:
    """Block until the container is final or ``timeout`` seconds pass; return the last state."""
    return await PollerClient.from_settings(settings, redis).wait(container_id, timeout=timeout)
