"""How the worker and the CLI reach Redis: one primary from REDIS_URL, or through Sentinel.

With ``REDIS_SENTINELS`` set, every new connection asks the sentinels where the primary of
``REDIS_SENTINEL_MASTER`` is, so after a failover the next reconnect lands on the new primary;
``REDIS_URL`` then only gives the database, user, password and TLS of the data nodes.
"""

from __future__ import annotations

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings for the worker."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    # Without these a Redis blip ends arq's main loop; with them calls wait and retry.
    # OSError too: a new connection to a Redis that is restarting fails with the builtin
    # ConnectionRefusedError inside redis-py's retry loop, before it is wrapped.
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    rs.retry = RedisRetry(ExponentialBackoff(cap=5.0, base=0.1), 8)
    rs.conn_timeout = 5
    rs.conn_retries = 30
    rs.conn_retry_delay = 1
    sentinels = settings.sentinel_addresses()
    if sentinels:
        # arq builds the Sentinel client itself and does not pass the retry settings above on;
        # a failed command then surfaces sooner, and worker.arq_worker logs it and goes on.
        rs.host = sentinels
        rs.sentinel = True
        rs.sentinel_master = settings.redis_sentinel_master
    return rs


def open_redis(settings: Settings, *, connect_timeout: float = 5.0) -> Redis:
    """A client for the CLI and producers in Python (no connection is made until first use)."""
    sentinels = settings.sentinel_addresses()
    if not sentinels:
        direct: Redis = Redis.from_url(settings.redis_url, socket_connect_timeout=connect_timeout)
        return direct
    rs = RedisSettings.from_dsn(settings.redis_url)
    sentinel = Sentinel(sentinels, socket_connect_timeout=connect_timeout)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        db=rs.database,
        username=rs.username,
        password=rs.password,
        ssl=rs.ssl,
        socket_connect_timeout=connect_timeout,
    )
    return client
