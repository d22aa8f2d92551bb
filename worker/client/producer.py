"""The producer's module functions: ``PollerClient.from_settings(settings, redis)`` per call.

    outcomes = await enqueue_many(redis, ["17889615691921648"], settings=settings)

The same as ``PollerClient(...).enqueue_many``; a service that enqueues more than once holds a
``PollerClient`` instead. ``settings`` is required: library code never reads the environment.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from config import Settings
from worker.client.client import EnqueueOutcome, PollerClient
from worker.store.results import ResultStore


def store_for(redis: Redis, settings: Settings) -> ResultStore:
    return ResultStore.from_settings(redis, settings)


async def enqueue_many(
    redis: Redis,
    container_ids: Iterable[str],
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
    reply_to: str | None = None,
    producer: str | None = None,
    traceparent: str | None = None,
    platform: str | None = None,
    settings: Settings,
) -> list[EnqueueOutcome]:
    """Start polling; ``publish=True`` also publishes each container once it is FINISHED."""
    return await PollerClient.from_settings(settings, redis).enqueue_many(
        container_ids,
        account=account,
        force=force,
        publish=publish,
        webhook_url=webhook_url,
        reply_to=reply_to,
        producer=producer,
        traceparent=traceparent,
        platform=platform,
    )


async def enqueue(
    redis: Redis,
    container_id: str,
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
    reply_to: str | None = None,
    producer: str | None = None,
    traceparent: str | None = None,
    platform: str | None = None,
    settings: Settings,
) -> EnqueueOutcome:
    return await PollerClient.from_settings(settings, redis).enqueue(
        container_id,
        account=account,
        force=force,
        publish=publish,
        webhook_url=webhook_url,
        reply_to=reply_to,
        producer=producer,
        traceparent=traceparent,
        platform=platform,
    )


async def enqueue_carousel(
    redis: Redis,
    parent: str,
    children: Iterable[str],
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
    reply_to: str | None = None,
    producer: str | None = None,
    traceparent: str | None = None,
    platform: str | None = None,
    settings: Settings,
) -> EnqueueOutcome:
    """``PollerClient.enqueue_carousel``: the parent polled once every child is FINISHED."""
    return await PollerClient.from_settings(settings, redis).enqueue_carousel(
        parent,
        children,
        account=account,
        force=force,
        publish=publish,
        webhook_url=webhook_url,
        reply_to=reply_to,
        producer=producer,
        traceparent=traceparent,
        platform=platform,
    )
