"""What every handler of ``serve`` shares: the settings, the Redis clients, the stores, the keys,
the latest sample of the deployment's gauges, and the stop signal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from jinja2 import Environment
from redis.asyncio import Redis

from config import Settings
from worker.client.client import PollerClient
from worker.core.access import Verdict
from worker.ops.metrics import DeploymentSample
from worker.store.admin import AdminStore
from worker.web.auth import KeySource

# Open event streams at most (each holds a Redis connection for its blocking reads).
MAX_EVENT_STREAMS = 64


def stuck_after(settings: Settings) -> float:
    """Seconds past its deadline after which a poll still in flight is stuck: the most throttling
    and pacing may push a window out, a job timeout, an interval and a margin."""
    return (
        settings.throttle_max_delay_seconds
        + settings.job_timeout_seconds
        + settings.poll_interval_seconds
        + 30.0
    )


@dataclass
class WebContext:
    settings: Settings
    redis: Redis
    # For the event streams' blocking reads only (so they never starve the other requests).
    stream_redis: Redis
    client: PollerClient
    admin: AdminStore
    keys: KeySource
    templates: Environment
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    sample: DeploymentSample | None = None
    sampled_at: float = 0.0

    @property
    def stuck_after(self) -> float:
        return stuck_after(self.settings)


CTX: web.AppKey[WebContext] = web.AppKey("threads_poller_ctx", WebContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
AUTH: web.RequestKey[Verdict] = web.RequestKey("auth", Verdict)
AUTH_VIA: web.RequestKey[str] = web.RequestKey("auth_via", str)


def ctx_of(request: web.Request) -> WebContext:
    return request.app[CTX]
