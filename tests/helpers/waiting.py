"""Waiting in a test: until a condition holds, and until containers are final (the wait most
tests end with, written once here rather than in each module)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from config import Settings
from worker import get_result
from worker.core.result import PollResult


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Until ``predicate()`` (a plain or a coroutine function) is true; AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def is_final(redis: Redis, settings: Settings, cid: str) -> bool:
    """Whether the container's result is stored and final."""
    r = await get_result(redis, cid, settings=settings)
    return r is not None and r.final


async def finals(
    redis: Redis, settings: Settings, ids: list[str], timeout: float = 20
) -> dict[str, PollResult]:
    """Each id's final result, once every one of them is final (AssertionError after
    ``timeout``); a result once final is not read again."""
    out: dict[str, PollResult] = {}

    async def done() -> bool:
        for cid in ids:
            if cid not in out:
                r = await get_result(redis, cid, settings=settings)
                if r is not None and r.final:
                    out[cid] = r
        return len(out) == len(ids)

    await wait_until(done, timeout=timeout)
    return out


async def final_of(redis: Redis, settings: Settings, cid: str, timeout: float = 15) -> PollResult:
    """One container's final result, once it is final."""
    return (await finals(redis, settings, [cid], timeout=timeout))[cid]
