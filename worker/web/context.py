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
from worker.ops.metrics import DeploymentSample
from worker.store.admin import AdminStore
from worker.store.sessions import SessionStore
from worker.web.access import Verdict
from worker.web.auth import KeySource
from worker.web.errors import ApiError

# What a refused stream or long poll is told to wait before trying again.
RETRY_AFTER_SECONDS = 5


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
    sessions: SessionStore
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    long_polls: int = 0
    # Event streams and long polls held per API key fingerprint ("open": no keys configured).
    waits_by_key: dict[str, int] = field(default_factory=dict)
    # Connections with a request under way (the connection guard closes only the others).
    busy: dict[object, int] = field(default_factory=dict)
    sample: DeploymentSample | None = None
    sampled_at: float = 0.0

    @property
    def stuck_after(self) -> float:
        return stuck_after(self.settings)

    def take_wait(self, kind: str, who: str) -> None:
        """Count an event stream (``kind`` "stream") or a long poll ("long_poll") of ``who``
        before anything is awaited, so that concurrent requests cannot all pass the check
        first; ApiError (with Retry-After) beyond the caps: in all 503, per key 429. Every
        successful call is paired with ``give_wait``."""
        s = self.settings
        if kind == "stream":
            if self.streams >= s.api_max_event_streams:
                raise _busy("too_many_streams", f"{s.api_max_event_streams} event streams are open")
        elif self.long_polls >= s.api_max_long_polls:
            raise _busy("too_many_long_polls", f"{s.api_max_long_polls} long polls are open")
        held = self.waits_by_key.get(who, 0)
        if who != OPEN and held >= s.api_max_waits_per_key:
            raise _busy(
                "too_many_requests",
                f"this API key holds {held} event streams and long polls; at most "
                f"{s.api_max_waits_per_key}",
            )
        self.waits_by_key[who] = held + 1
        if kind == "stream":
            self.streams += 1
        else:
            self.long_polls += 1

    def give_wait(self, kind: str, who: str) -> None:
        if kind == "stream":
            self.streams -= 1
        else:
            self.long_polls -= 1
        left = self.waits_by_key.get(who, 0) - 1
        if left > 0:
            self.waits_by_key[who] = left
        else:
            self.waits_by_key.pop(who, None)


# Who holds a wait when no key is configured (loopback only): the caps in all apply.
OPEN = "open"


def _busy(code: str, message: str) -> ApiError:
    err = ApiError(code, message)
    err.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return err


def holder(request: web.Request) -> str:
    """The fingerprint of the key the request was let in with (OPEN without keys)."""
    verdict = request.get(AUTH)
    key = verdict.key if verdict is not None else None
    return key.fingerprint if key is not None else OPEN


CTX: web.AppKey[WebContext] = web.AppKey("threads_poller_ctx", WebContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
AUTH: web.RequestKey[Verdict] = web.RequestKey("auth", Verdict)
AUTH_VIA: web.RequestKey[str] = web.RequestKey("auth_via", str)


def ctx_of(request: web.Request) -> WebContext:
    return request.app[CTX]
