"""The Python reader API: a container's result, or wait until it is final."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from config import Settings, load_settings
from worker.client.producer import store_for
from worker.core.ids import validate_id
from worker.core.result import PollResult


async def get_result(
    redis: Redis, container_id: str, *, settings: Settings | None = None
) -> PollResult | None:
    """The stored state, or None when the id was never enqueued (or its result expired)."""
    settings = settings or load_settings()
    return await store_for(redis, settings).load(validate_id(container_id))


async def wait_for(
    redis: Redis,
    container_id: str,
    timeout: float,  # noqa: ASYNC109 - the documented API: wait_for(id, timeout)
    *,
    settings: Settings | None = None,
) -> PollResult | None:
    """Block until the container is final or ``timeout`` seconds pass; return the last state.

    Wakes on the events stream (XREAD BLOCK) rather than polling the hash; the hash is re-read
    at least once a second so a trimmed stream or a missed event cannot make it hang.
    """
    settings = settings or load_settings()
    store = store_for(redis, settings)
    cid = validate_id(container_id)
    deadline = time.monotonic() + timeout
    last_id = "$"
    while True:
        result = await store.load(cid)
        if result is not None and result.final:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return result
        block_ms = max(1, int(min(remaining, 1.0) * 1000))
        reply = await redis.xread({store.keys.events: last_id}, block=block_ms, count=100)
        for _stream, entries in reply or []:
            if entries:
                last_id = entries[-1][0]
        await asyncio.sleep(0)
