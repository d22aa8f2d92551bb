"""Settings as the environment of a ``threads-poller`` process (the CLI, a worker, ``serve``):
what a test hands a child so that it works like the test's ``Settings``."""

from __future__ import annotations

import os

from config import Settings
from tests.helpers.settings import TEST_TOKEN


def project_environment(redis_url: str) -> dict[str, str]:
    """This process's environment for the CLI as a subprocess (the ``project_env`` fixture):
    no ``THREADS_*``/``POLL_*`` setting of the caller's, the test's Redis, no pacing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADS_", "POLL_"))}
    env["REDIS_URL"] = redis_url
    env["LOG_FORMAT"] = "json"
    env["ACCOUNT_MAX_REQUESTS_PER_SECOND"] = "0"
    env["THROTTLE_BACKOFF_SECONDS"] = "0.3"
    env["METRICS_PORT"] = "0"
    return env


def worker_env(project_env: dict[str, str], settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a ``threads-poller`` process that works like ``settings``."""
    env = dict(
        project_env,
        THREADS_API_BASE_URL=settings.threads_api_base_url,
        THREADS_ACCESS_TOKEN=TEST_TOKEN,
        POLL_INTERVAL_SECONDS=str(settings.poll_interval_seconds),
        POLL_MAX_SECONDS=str(settings.poll_max_seconds),
        HTTP_TIMEOUT_SECONDS="1",
        JOB_TIMEOUT_SECONDS="5",
    )
    env.update(overrides)
    return env
