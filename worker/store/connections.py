"""How the worker and the CLI reach Redis: one primary from REDIS_URL, or through Sentinel.

With ``REDIS_SENTINELS`` set, every new connection asks the sentinels where the primary of
``REDIS_SENTINEL_MASTER`` is, so after a failover the next reconnect lands on the new primary;
``REDIS_URL`` then only gives the database, user, password and TLS of the data nodes.

Credentials and TLS: the password is REDIS_URL's or ``REDIS_PASSWORD_FILE``'s; ``rediss://``
verifies the server's certificate and host name (against ``REDIS_TLS_CA_FILE`` when set). The
password never goes into a message: redis-py's errors and ``repr`` do not carry it, and ours
print ``config.settings.redacted_url``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api_client.redact import redact
from config import Settings

log = logging.getLogger("threads_poller.worker")

# A worker that cannot reach Redis at start says so once per attempt and gives up after about
# this long (exit 1), so an orchestrator's restart policy and logs take over.
STARTUP_ATTEMPTS = 30
STARTUP_PAUSE_SECONDS = 2.0


def _options(settings: Settings, *, connect_timeout: float, worker: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_connect_timeout": connect_timeout}
    if settings.redis_password_file is not None:
        # Only when REDIS_URL has none (a URL's own options win in redis-py; Settings refuses
        # both at once).
        options["password"] = settings.redis_password()
    if settings.redis_url.startswith("rediss://"):
        # redis-py checks the certificate but not, by default, that it names the host: any
        # certificate of the CA would do. REDIS_URL's ?ssl_check_hostname=false still wins.
        options["ssl_check_hostname"] = True
        if settings.redis_tls_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if worker:
        # Without these a Redis blip fails every command at once; with them a command waits
        # out a restart (about 2.5 s of retries). Not longer: the runner and the fenced writes
        # retry on their own, and a command stuck in long back-off would hold a claim for the
        # whole of a failover after the new primary is up. OSError too: a new connection to a
        # Redis that is restarting fails with the builtin ConnectionRefusedError inside
        # redis-py's retry loop, before it is wrapped.
        options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError, OSError]
        options["retry"] = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), 6)
    return options


def open_redis(settings: Settings, *, connect_timeout: float = 5.0, worker: bool = False) -> Redis:
    """A client (no connection is made until first use); ``worker`` adds command retries."""
    options = _options(settings, connect_timeout=connect_timeout, worker=worker)
    sentinels = settings.sentinel_addresses()
    if not sentinels:
        direct: Redis = Redis.from_url(settings.redis_url, **options)
        return direct
    # arq's DSN parser: the database, user, password and TLS of the data nodes.
    rs = RedisSettings.from_dsn(settings.redis_url)
    sentinel = Sentinel(sentinels, socket_connect_timeout=connect_timeout)  # type: ignore[no-untyped-call]
    if rs.password:
        options["password"] = rs.password
    if not rs.ssl:
        options.pop("ssl_check_hostname", None)
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        db=rs.database,
        username=rs.username,
        ssl=rs.ssl,
        **options,
    )
    return client


async def connect_worker_redis(settings: Settings) -> Redis:
    """The worker's client, once Redis answers; each failed attempt is logged once."""
    redis = open_redis(settings, worker=True)
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            await redis.ping()
            return redis
        except AuthenticationError:
            # Wrong credentials do not heal by waiting: say so at once (exit 1).
            await redis.aclose()
            raise
        except (RedisError, OSError) as exc:
            log.warning(
                "cannot reach Redis (attempt %d of %d); retrying in %.0fs",
                attempt,
                STARTUP_ATTEMPTS,
                STARTUP_PAUSE_SECONDS,
                extra={"error": redact(f"{type(exc).__name__}: {exc}")[:300]},
            )
            if attempt == STARTUP_ATTEMPTS:
                await redis.aclose()
                raise
            await asyncio.sleep(STARTUP_PAUSE_SECONDS)
    raise AssertionError("unreachable")
