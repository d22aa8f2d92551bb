"""Publishing quota: read an account's limit (Threads' ``threads_publishing_limit``,
Instagram's ``content_publishing_limit``: ``api_client.platforms``) and cache it in Redis.

``get_quota(user_id, settings=settings, platform=...)`` is the Python API;
``threads-poller quota USER_ID [--platform instagram]`` the CLI.
Workers refresh the cached copy of every account seen at enqueue in the last 24 h every
``QUOTA_REFRESH_SECONDS`` (one worker per account per period, by a short Redis lock), so callers
can read ``{prefix}:quota:{account}`` (an Instagram account: ``instagram:<id>``) without
spending API calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import aiohttp
from redis.asyncio import Redis

from api_client.client import ThreadsClient, make_session
from api_client.errors import MissingTokenError, ThreadsError
from api_client.models import PublishingLimit, QuotaSnapshot
from api_client.platforms import (
    PLATFORMS,
    THREADS,
    Platform,
    platform_named,
    platform_of_account,
    user_id_of,
)
from config import AuthMode, Settings
from worker.core.ids import validate_id
from worker.jobs.tokens import AccountTokenSource, TokenSource
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
        platform_defaults={
            k: v for k, v in settings.default_tokens().items() if k != THREADS.name.value
        },
    )


def client_for(
    settings: Settings, session: aiohttp.ClientSession, platform: Platform = THREADS
) -> ThreadsClient:
    return ThreadsClient(
        session,
        base_url=settings.api_base_url(platform),
        auth_header=settings.threads_auth_mode == AuthMode.HEADER,
        platform=platform,
    )


def clients_for(settings: Settings, session: aiohttp.ClientSession) -> dict[str, ThreadsClient]:
    """One client per platform, sharing the worker's session (its pool and timeout)."""
    return {name: client_for(settings, session, p) for name, p in PLATFORMS.items()}


async def fetch_quota(
    clients: Mapping[str, ThreadsClient], tokens: TokenSource, account: str
) -> QuotaSnapshot:
    """One account's publishing limit, asked of its platform (``account``: an account key,
    ``Platform.account_key``; the snapshot is cached under it)."""
    client = clients[platform_of_account(account).name.value]
    token = await tokens.token_for(account)
    if not token:
        raise MissingTokenError(f"no access token configured for account {account}")
    try:
        limit = await client.get_publishing_limit(user_id_of(account) or "me", token=token)
    except ThreadsError as exc:
        raise ThreadsClient.scrub(exc, token) from None
    return QuotaSnapshot(
        user_id=account,
        fetched_at=time.time(),
        limit=limit,
        posts_remaining=limit.remaining("quota"),
    )


async def get_quota(
    user_id: str, *, settings: Settings, redis: Redis | None = None, platform: str = "threads"
) -> PublishingLimit:
    """Ask the API for one account's publishing limits; cache them in Redis when given one."""
    user_id = validate_id(user_id, what="user id")
    account = platform_named(platform).account_key(user_id)
    async with make_session(timeout_seconds=settings.http_timeout_seconds) as session:
        snapshot = await fetch_quota(
            clients_for(settings, session), token_source(settings), account
        )
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
    clients: Mapping[str, ThreadsClient],
    tokens: TokenSource,
    settings: Settings,
) -> None:
    """Keep the cached quota of every recently active account (any platform) fresh (a failed
    round is logged, the next one tries again)."""
    period = settings.quota_refresh_seconds

    async def round_() -> None:
        seconds, _ = await redis.time()
        users = await accounts.active_accounts(since=float(seconds) - 86400)
        for platform in PLATFORMS.values():
            own = settings.platform_user_id(platform)
            if own and platform.account_key(own) not in users:
                users.append(platform.account_key(own))
        for user_id in users:
            lock = accounts.keys.quota_lock(user_id)
            # One worker per account per period; the others skip it.
            if not await redis.set(lock, b"1", nx=True, px=int(period * 1000)):
                continue
            try:
                snapshot = await fetch_quota(clients, tokens, user_id)
            except ThreadsError as exc:
                log.warning("quota refresh failed", extra={"account": user_id, "error": str(exc)})
                continue
            await accounts.save_quota(snapshot, quota_ttl(settings))

    await every("quota refresh", period, round_, logger=log)
