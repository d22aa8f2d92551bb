"""What every ``threads-poller`` command shares: the exit codes, the error that carries one, the
settings as a command reads them, and a client on its own Redis connection.

The bottom of ``worker.cli``: the command modules import it, it imports none of them (the
import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings, SettingsError, load_settings
from config.settings import redacted_url
from worker.client.client import PollerClient
from worker.core.targets import webhook_policy

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REDIS = 0, 1, 2, 3, 4

T = TypeVar("T")


class CliError(Exception):
    """A command's refusal: ``main`` prints the message on stderr and exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class RedisUnreachableError(CliError):
    """Exit 4 because nothing answered (refused, timed out, a network error), as opposed to a
    Redis that answered and refused this user."""


def safe_redis_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    return redacted_url(url)


def redis_where(settings: Settings) -> str:
    """Which Redis, for messages: REDIS_URL without its password, or the cluster's nodes (whose
    URL's host is not used)."""
    if settings.redis_cluster_nodes:
        return f"the Redis Cluster {settings.redis_cluster_nodes}"
    return f"Redis at {safe_redis_url(settings.redis_url)}"


def load_cli_settings() -> Settings:
    """The settings, an invalid one (WEBHOOK_ALLOWED_HOSTS included) an exit 2."""
    try:
        settings = load_settings()
        webhook_policy(settings)  # WEBHOOK_ALLOWED_HOSTS is parsed there
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return settings


def with_client(settings: Settings, work: Callable[[PollerClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of its own Redis connection, closed afterwards."""

    async def run() -> T:
        async with PollerClient.from_settings(settings) as client:
            try:
                return await work(client)
            except NoPermissionError as exc:
                # A least-privilege user (README, Security): say what it may not do.
                raise CliError(
                    f"Redis refused this user ({exc}); a producer-only user enqueues with --intake",
                    EXIT_REDIS,
                ) from None
            except AuthenticationError:
                raise CliError(
                    f"{redis_where(settings)} refused the credentials",
                    EXIT_REDIS,
                ) from None
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise RedisUnreachableError(
                    f"cannot reach {redis_where(settings)}: {type(exc).__name__}",
                    EXIT_REDIS,
                ) from None

    return asyncio.run(run())
