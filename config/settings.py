"""Every knob of the service, with its default, in one pydantic-settings model.

Environment variables carry no prefix (``REDIS_URL``, ``POLL_INTERVAL_SECONDS``...) because the
names are the documented interface of the container image; a `.env` file in the working directory
is read too. Secrets are ``SecretStr`` so that a ``repr`` of the settings never shows them.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_BASE_URL = "https://graph.threads.net/v1.0"


class AuthMode(StrEnum):
    """How the access token travels: Meta documents the query parameter for Threads."""

    QUERY = "query"
    HEADER = "header"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


# "host:port" (IPv6 in brackets), comma-separated.
_SENTINEL = r"[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}"
_SENTINELS = rf"^{_SENTINEL}(,{_SENTINEL})*$"


class EventLoop(StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class SettingsError(Exception):
    """A setting has a value the service cannot start with; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        # "inf" and "nan" parse as floats; no setting here means either.
        allow_inf_nan=False,
    )

    redis_url: str = Field(
        default="redis://localhost:6379/0", pattern=r"^(redis|rediss|unix)://\S+$"
    )
    # Redis Sentinel, for failover: "host:port,host:port". The worker and the CLI then ask the
    # sentinels for the primary of REDIS_SENTINEL_MASTER (again after a failover); REDIS_URL
    # still gives the database, user and password of the data nodes, its host is not used.
    redis_sentinels: str | None = Field(default=None, pattern=_SENTINELS)
    redis_sentinel_master: str = Field(default="mymaster", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    threads_access_token: SecretStr | None = None
    threads_api_base_url: str = Field(default=DEFAULT_API_BASE_URL, pattern=r"^https?://\S+$")
    threads_auth_mode: AuthMode = AuthMode.QUERY
    # The Threads user id that THREADS_ACCESS_TOKEN belongs to (for its quota); optional.
    threads_user_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    # Per-account tokens: a JSON object {"<user id>": "<token>"}, re-read when it changes, so a
    # pipeline that refreshes its 60-day tokens just rewrites the file (or the mounted secret).
    threads_tokens_file: Path | None = None

    # Meta: "query once per minute, for no more than 5 minutes". Fractions are allowed so that
    # tests and the demo can compress the schedule; production keeps the defaults.
    poll_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    poll_max_seconds: float = Field(default=300.0, ge=0, le=86400)

    result_ttl_seconds: int = Field(default=7 * 86400, ge=60)
    events_max_len: int = Field(default=100_000, ge=100)
    worker_max_jobs: int = Field(default=200, ge=1, le=100_000)
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # A run that outlives this is cut off and its job runs again later (checked below: well
    # above the HTTP timeout). A run owns its poll for this + 2 s (its lease).
    job_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)

    # Being a good citizen of the Graph API (see the error policy in api_client/policy.py).
    api_max_concurrency: int = Field(default=50, ge=1, le=10_000)
    account_max_requests_per_second: float = Field(default=5.0, ge=0)
    throttle_backoff_seconds: float = Field(default=60.0, gt=0)
    throttle_backoff_max_seconds: float = Field(default=900.0, gt=0)
    # How far throttling may push a container's window past POLL_MAX_SECONDS.
    throttle_max_delay_seconds: float = Field(default=900.0, ge=0)
    usage_throttle_percent: float = Field(default=90.0, gt=0, le=100)
    quota_refresh_seconds: float = Field(default=300.0, gt=0)

    # Auto-publish (per container, opt-in at enqueue).
    # A short grace after FINISHED: publishing at once sometimes fails with 24/4279009.
    publish_grace_seconds: float = Field(default=5.0, ge=0)
    publish_max_attempts: int = Field(default=3, ge=1, le=20)

    # Webhooks on final states (a default URL here, or one per enqueue).
    webhook_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=5, ge=1, le=50)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0)

    key_prefix: str = Field(default="threads-poller", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    intake_batch_size: int = Field(default=100, ge=1, le=10_000)
    intake_claim_idle_seconds: float = Field(default=30.0, gt=0)
    intake_max_entry_bytes: int = Field(default=4096, ge=64)

    # uvloop cuts the worker's CPU per check by about a tenth (README, performance); asyncio is
    # there for platforms without uvloop and for comparison.
    event_loop: EventLoop = EventLoop.UVLOOP
    log_format: LogFormat = LogFormat.AUTO
    log_level: str = Field(default="INFO", pattern=r"^(?i:debug|info|warning|error)$")
    # Prometheus /metrics of each worker process (worker/ops/metrics.py); 0 turns it off.
    metrics_port: int = Field(default=9100, ge=0, le=65535)

    # `threads-poller serve`: the HTTP API and the console (worker/web/). Loopback by default;
    # any other address needs API keys (serve refuses to start without one).
    http_host: str = Field(default="127.0.0.1", pattern=r"^[A-Za-z0-9_.:\[\]-]{1,255}$")
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Bearer keys, comma-separated (at least 16 characters each): read-write, and read-only.
    api_keys: SecretStr | None = None
    api_read_keys: SecretStr | None = None
    # The same lists in files (commas or one per line, # comments), re-read when they change.
    api_keys_file: Path | None = None
    api_read_keys_file: Path | None = None
    api_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    api_max_batch: int = Field(default=1000, ge=1, le=10_000)
    # The longest ?wait= of GET /v1/containers/{id}.
    api_max_wait_seconds: float = Field(default=60.0, gt=0, le=600)

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty without Sentinel."""
        if not self.redis_sentinels:
            return []
        pairs = []
        for item in self.redis_sentinels.split(","):
            host, _, port = item.rpartition(":")
            pairs.append((host.strip("[]"), int(port)))
        return pairs

    @model_validator(mode="after")
    def _check_webhook_secret(self) -> Self:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "WEBHOOK_SECRET must be set when WEBHOOK_URL is (deliveries are signed)"
            )
        return self

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.job_timeout_seconds < 2 * self.http_timeout_seconds:
            raise ValueError(
                "JOB_TIMEOUT_SECONDS must be at least twice HTTP_TIMEOUT_SECONDS "
                f"({self.job_timeout_seconds} < 2 x {self.http_timeout_seconds})"
            )
        return self

    def longest_poll_seconds(self) -> float:
        """The longest a poll and its webhook can take from enqueue to done: the window, all the
        delay throttling and pacing may add, every publish attempt, every webhook retry."""
        publish = self.publish_max_attempts * (
            self.publish_grace_seconds + self.poll_interval_seconds
        )
        retries = sum(
            min(self.webhook_backoff_seconds * 2**k, 10 * 86400.0)
            for k in range(self.webhook_max_attempts - 1)
        )
        webhook = retries + self.webhook_max_attempts * (self.webhook_timeout_seconds + 2)
        return float(
            self.poll_max_seconds
            + self.throttle_max_delay_seconds
            + publish
            + webhook
            + self.job_timeout_seconds
            + self.poll_interval_seconds
        )

    @model_validator(mode="after")
    def _check_result_ttl(self) -> Self:
        # A result (and its job) must outlive the longest poll, or both vanish mid-poll.
        longest = self.longest_poll_seconds()
        if self.result_ttl_seconds < longest:
            raise ValueError(
                f"RESULT_TTL_SECONDS ({self.result_ttl_seconds}) is shorter than the longest "
                f"possible poll ({math.ceil(longest)} s: POLL_MAX_SECONDS + "
                "THROTTLE_MAX_DELAY_SECONDS + publish attempts + webhook retries + "
                "JOB_TIMEOUT_SECONDS); raise it or shorten those"
            )
        return self

    def token(self) -> str | None:
        return self.threads_access_token.get_secret_value() if self.threads_access_token else None


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = "_".join(str(part) for part in err["loc"]).upper() or "SETTINGS"
            # Never echo the input: it may be a token.
            lines.append(f"invalid setting {loc}: {err['msg']}")
        raise SettingsError("; ".join(lines)) from None
