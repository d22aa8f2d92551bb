"""The Python producer API: hand container ids to the poller.

    async with redis_client(settings) as redis:
        outcomes = await enqueue_many(redis, ["17889615691921648"], settings=settings)

Ids are validated before anything is written; a batch is one Redis round trip. Enqueueing an id
that is already being polled creates no job and costs no API call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from config import Settings, load_settings
from worker.core.ids import InvalidIdError, validate_id, validate_webhook_url
from worker.store.results import Enqueued, EnqueueRequest, EnqueueStatus, ResultStore


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    container_id: str
    outcome: EnqueueStatus  # enqueued | restarted | duplicate | final
    status: str  # the container's status right after the call

    @classmethod
    def of(cls, e: Enqueued) -> EnqueueOutcome:
        return cls(e.container_id, e.outcome, e.status)


def store_for(redis: Redis, settings: Settings) -> ResultStore:
    return ResultStore.from_settings(redis, settings)


def build_requests(
    container_ids: Iterable[str],
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
) -> list[EnqueueRequest]:
    """Validate everything first: a batch with one bad id writes nothing (raises InvalidIdError)."""
    if isinstance(container_ids, str | bytes):
        # A lone id would otherwise be iterated digit by digit.
        raise InvalidIdError("container ids must be a list of ids, not one string")
    acct = validate_id(account, what="account id") if account is not None else None
    hook = validate_webhook_url(webhook_url) if webhook_url is not None else None
    seen: dict[str, None] = {}
    for raw in container_ids:
        seen[validate_id(raw)] = None
    return [EnqueueRequest(cid, acct, force, publish, hook) for cid in seen]


async def enqueue_many(
    redis: Redis,
    container_ids: Iterable[str],
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
    settings: Settings | None = None,
) -> list[EnqueueOutcome]:
    """Start polling; ``publish=True`` also publishes each container once it is FINISHED."""
    settings = settings or load_settings()
    requests = build_requests(
        container_ids, account=account, force=force, publish=publish, webhook_url=webhook_url
    )
    done = await store_for(redis, settings).enqueue(requests)
    return [EnqueueOutcome.of(e) for e in done]


async def enqueue(
    redis: Redis,
    container_id: str,
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
    settings: Settings | None = None,
) -> EnqueueOutcome:
    (outcome,) = await enqueue_many(
        redis,
        [container_id],
        account=account,
        force=force,
        publish=publish,
        webhook_url=webhook_url,
        settings=settings,
    )
    return outcome
