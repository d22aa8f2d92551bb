"""How the worker, ``serve``, the CLI and the Python client reach Redis: one primary from
REDIS_URL, through Sentinel, or a Redis Cluster.

With ``REDIS_SENTINELS`` set, every new connection asks the sentinels where the primary of
``REDIS_SENTINEL_MASTER`` is, so after a failover the next reconnect lands on the new primary;
``REDIS_URL`` then only gives the database, user, password and TLS of the data nodes.

With ``REDIS_CLUSTER_NODES`` set, redis-py's cluster client (``worker.store.cluster``: pipelines,
TIME and PING on the primary of the deployment's slot); ``REDIS_URL`` then only gives the user,
password and TLS of the nodes.

Credentials and TLS: the password is REDIS_URL's or ``REDIS_PASSWORD_FILE``'s; ``rediss://``
verifies the server's certificate and host name (against ``REDIS_TLS_CA_FILE`` when set). The
password never goes into a message: redis-py's errors and ``repr`` do not carry it, and ours
print ``config.settings.redacted_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from api_client.redact import redact
from config import Settings
from worker.store.cluster import open_cluster

log = logging.getLogger("threads_poller.worker")

# Between start-up attempts to reach Redis (REDIS_STARTUP_TIMEOUT_SECONDS bounds them all).
STARTUP_PAUSE_SECONDS = 2.0


class StartupAborted(Exception):
    """A stop was asked for before Redis answered."""


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


# How long a request of ``serve`` waits for a free connection of its bounded pool.
POOL_WAIT_SECONDS = 5.0


class _PackedInC(AbstractConnection):
    """A command packed by hiredis (C) instead of redis-py's asyncio packer (Python).

    redis-py's asyncio connections pack every command in Python, argument by argument: for the
    record script's ~60 keys and arguments that was ~45 us, about a tenth of a check's CPU
    (README, "Where a check's CPU goes beyond the floor"); hiredis does it in ~5 us. redis-py's
    own sync client packs with hiredis the same way (``HiredisRespSerializer``). The bytes are
    the same (tests/unit/test_redis_packing.py); whatever hiredis refuses (a bool, None, an int
    subclass such as an IntEnum) or a client encoding other than strict UTF-8 goes to redis-py's
    packer, so its errors (``DataError``) and output stay exactly what they were.
    """

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        encoder = self.encoder
        if encoder.encoding in _UTF8 and encoder.encoding_errors == "strict":
            # redis-py's rule: a command name with spaces ("CONFIG GET") is several arguments.
            first = args[0]
            parts: tuple[Any, ...] = args
            if isinstance(first, str):
                parts = (*first.encode().split(), *args[1:])
            elif isinstance(first, bytes) and b" " in first:
                parts = (*first.split(), *args[1:])
            try:
                return [hiredis.pack_command(parts)]
            except TypeError:
                pass  # redis-py's packer says what is wrong (DataError), as before
        packed: list[bytes] = super().pack_command(*args)
        return packed


_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})
_PACKED_IN_C: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packed_in_c(redis: Redis) -> Redis:
    """``redis`` with its pool's connections packing commands in C (``_PackedInC``); before any
    connection is made (a client makes none until its first command)."""
    pool = redis.connection_pool
    cls = pool.connection_class
    if not issubclass(cls, _PackedInC):
        fast = _PACKED_IN_C.get(cls)
        if fast is None:
            # The same connection class (TCP, TLS, Unix socket, Sentinel's), packing in C.
            fast = type(cls.__name__, (_PackedInC, cls), {"__module__": __name__})
            _PACKED_IN_C[cls] = fast
        pool.connection_class = fast
    return redis


def open_redis(
    settings: Settings,
    *,
    connect_timeout: float = 5.0,
    worker: bool = False,
    max_connections: int | None = None,
) -> Redis:
    """A client (no connection is made until first use); ``worker`` adds command retries.

    ``max_connections`` bounds the pool (``serve``: however many requests come, it never opens
    more, so Redis' ``maxclients`` stays for the workers and the CLI); a command beyond waits up
    to POOL_WAIT_SECONDS for a connection, then fails with a ConnectionError."""
    options = _options(settings, connect_timeout=connect_timeout, worker=worker)
    nodes = settings.cluster_addresses()
    if nodes:
        return open_cluster(
            nodes,
            slot_key=settings.key_prefix,
            url_options=dict(parse_url(settings.redis_url)),
            options=options,
            max_connections=max_connections,
            pool_wait=POOL_WAIT_SECONDS,
        )
    if max_connections is not None:
        options["max_connections"] = max_connections
    sentinels = settings.sentinel_addresses()
    if not sentinels:
        if max_connections is not None:
            pool = BlockingConnectionPool.from_url(
                settings.redis_url, timeout=POOL_WAIT_SECONDS, **options
            )
            bounded: Redis = Redis.from_pool(pool)  # closes the pool with the client
            return packed_in_c(bounded)
        direct: Redis = Redis.from_url(settings.redis_url, **options)
        return packed_in_c(direct)
    # redis-py's URL parser (as for a direct connection): the database, user, password and TLS
    # of the data nodes (its host and port are the sentinels' to say).
    url = parse_url(settings.redis_url)
    ssl = settings.redis_url.startswith("rediss://")
    sentinel = Sentinel(sentinels, socket_connect_timeout=connect_timeout)  # type: ignore[no-untyped-call]
    if url.get("password"):
        options["password"] = url["password"]
    if not ssl:
        options.pop("ssl_check_hostname", None)
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        db=int(url.get("db") or 0),
        username=url.get("username"),
        ssl=ssl,
        **options,
    )
    return packed_in_c(client)


async def connect_worker_redis(
    settings: Settings, *, stopping: asyncio.Event | None = None
) -> Redis:
    """The worker's client, once Redis answers; each failed attempt is logged once.

    Gives up (re-raising the last error) after ``REDIS_STARTUP_TIMEOUT_SECONDS``, and at once
    with StartupAborted when ``stopping`` is set (SIGTERM while Redis is down)."""
    redis = open_redis(settings, worker=True)
    try:
        await _until_answered(redis, settings.redis_startup_timeout_seconds, stopping)
    except BaseException:
        await redis.aclose()
        raise
    return redis


async def _until_answered(redis: Redis, timeout_s: float, stopping: asyncio.Event | None) -> None:
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + timeout_s
    attempt = 0
    last: BaseException | None = None
    while True:
        attempt += 1
        ping = asyncio.ensure_future(redis.ping())
        stop = asyncio.ensure_future(stopping.wait())
        left = max(0.1, give_up_at - loop.time())
        done, _ = await asyncio.wait({ping, stop}, timeout=left, return_when="FIRST_COMPLETED")
        stop.cancel()
        if ping in done and ping.exception() is None:
            return
        exc: BaseException
        if ping in done:
            exc = ping.exception() or RedisTimeoutError("no answer from Redis")
            # Wrong credentials do not heal by waiting: say so at once (exit 1).
            if isinstance(exc, AuthenticationError) or not isinstance(exc, RedisError | OSError):
                raise exc
            last = exc
        else:
            ping.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await ping
            if stopping.is_set():
                raise StartupAborted
            # Cut short by the deadline: the last answer Redis (or the OS) gave says more.
            exc = last or RedisTimeoutError("no answer from Redis")
        left = give_up_at - loop.time()
        final = left <= STARTUP_PAUSE_SECONDS
        log.warning(
            "cannot reach Redis (attempt %d); %s",
            attempt,
            "giving up"
            if final
            else f"retrying in {STARTUP_PAUSE_SECONDS:.0f}s, giving up in {left:.0f}s",
            extra={"error": redact(f"{type(exc).__name__}: {exc}")[:300]},
        )
        if final:
            raise exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), STARTUP_PAUSE_SECONDS)
        if stopping.is_set():
            raise StartupAborted
