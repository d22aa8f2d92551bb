"""Publishing quota: read ``threads_publishing_limit`` for an account and cache it in Redis.

``get_quota(user_id, settings=settings)`` is the Python API; ``threads-poller quota USER_ID``
the CLI. Workers refresh the cached copy of every account seen at enqueue in the last 24 h every
``QUOTA_REFRESH_SECONDS`` (one worker per account per period, by a short Redis lock), so callers
can read ``{prefix}:quota:{user_id}`` without spending API calls.
"""

from __future__ import annotations

import logging
import time

import aiohttp
from redis.asyncio import Redis

from api_client.client import ThreadsClient, make_session
from api_client.errors import MissingTokenError, ThreadsError
from api_client.models import PublishingLimit, QuotaSnapshot
from config import AuthMode, Settings
from worker.core.ids import validate_id
from worker.jobs.tokens import DEFAULT_ACCOUNT, AccountTokenSource, TokenSource
from worker.ops.loops import every
from worker.store.accounts import AccountStore
from worker.store.keys import Keys

log = logging.getLogger("threads_poller.quota")


def token_source(settings: Settings) -> AccountTokenSource:
    return AccountTokenSource(
        settings.threads_access_token,
        settings.threads_tokens_file,
        mode_check=settings.secret_file_mode_check,
        refreshed_file=settings.tokens_refreshed_file,
    )


def client_for(settings: Settings, session: aiohttp.ClientSession) -> ThreadsClient:
    return ThreadsClient(
        session,
        base_url=settings.threads_api_base_url,
        auth_header=settings.threads_auth_mode == AuthMode.HEADER,
    )


async def fetch_quota(client: ThreadsClient, tokens: TokenSource, user_id: str) -> QuotaSnapshot:
    account = None if user_id == DEFAULT_ACCOUNT else user_id
    token = await tokens.token_for(account)
    if not token:
        raise MissingTokenError(f"no access token configured for account {user_id}")
    try:
        limit = await client.get_publishing_limit(user_id, token=token)
    except ThreadsError as exc:
        raise ThreadsClient.scrub(exc, token) from None
    return QuotaSnapshot(
        user_id=user_id,
        fetched_at=time.time(),
        limit=limit,
        posts_remaining=limit.remaining("quota"),
    )


async def get_quota(
    user_id: str, *, settings: Settings, redis: Redis | None = None
) -> PublishingLimit:
    """Ask the API for one account's publishing limits; cache them in Redis when given one."""
    user_id = validate_id(user_id, what="user id")
    async with make_session(timeout_seconds=settings.http_timeout_seconds) as session:
        snapshot = await fetch_quota(client_for(settings, session), token_source(settings), user_id)
    if redis is not None:
        await AccountStore(redis, Keys(settings.key_prefix)).save_quota(
            snapshot, quota_ttl(settings)
        )
    return snapshot.limit


def quota_ttl(settings: Settings) -> int:
    return int(max(3 * settings.quota_refresh_seconds, 3600))


async def refresh_quotas_forever(
    redis: Redis,
    accounts: AccountStore,
    client: ThreadsClient,
    tokens: TokenSource,
    settings: Settings,
) -> None:
    """Keep the cached quota of every recently active account fresh (a failed round is logged,
    the next one tries again)."""
    period = settings.quota_refresh_seconds

    async def round_() -> None:
        seconds, _ = await redis.time()
        users = await accounts.active_accounts(since=float(seconds) - 86400)
        if settings.threads_user_id and settings.threads_user_id not in users:
            users.append(settings.threads_user_id)
        for user_id in users:
            lock = f"{accounts.keys.quota(user_id)}:lock"
            # One worker per account per period; the others skip it.
            if not await redis.set(lock, b"1", nx=True, px=int(period * 1000)):
                continue
            try:
                snapshot = await fetch_quota(client, tokens, user_id)
            except ThreadsError as exc:
                log.warning("quota refresh failed", extra={"account": user_id, "error": str(exc)})
                continue
            await accounts.save_quota(snapshot, quota_ttl(settings))

    await every("quota refresh", period, round_, logger=log)
