"""Every knob of the service, with its default, in one pydantic-settings model.

Environment variables carry no prefix (``REDIS_URL``, ``POLL_INTERVAL_SECONDS``...) because the
names are the documented interface of the container image; a `.env` file in the working directory
is read too. Secrets are ``SecretStr`` so that a ``repr`` of the settings never shows them.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from api_client.platforms import INSTAGRAM, THREADS, Platform, PlatformName
from config.producers import Producers, ProducersError, parse_producers
from config.secrets import FileModeCheck, SecretFileError, file_mode_problem, read_secret_file
from config.webhook_keys import SignatureScheme, SigningSecret, WebhookKeyError, parse_secrets

DEFAULT_API_BASE_URL = THREADS.default_base_url
# Between attempts 1-2, 2-3, ...: what users of webhook services know (Stripe, GitHub's
# redeliveries): a blip is retried at once, an outage of hours is still covered (~17.6 h in all).
DEFAULT_WEBHOOK_RETRY_SCHEDULE = "5s,5m,30m,2h,5h,10h"
# Before WEBHOOK_RETRY_SCHEDULE: WEBHOOK_BACKOFF_SECONDS doubling, this many attempts.
LEGACY_WEBHOOK_MAX_ATTEMPTS = 5
MAX_RETRY_DELAY_SECONDS = 86400.0
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# KEY_PREFIX, and what `threads-poller acl --prefix` accepts (worker/store/acl.py): letters,
# digits, "_", "." and "-", with at most one Redis Cluster hash tag ("{tp}", "{tp}-prod",
# "tp-{a}"): braces only as one non-empty pair, so the tag Redis hashes is the one written
# (Redis hashes the text between the first "{" and the next "}"). 1 to KEY_PREFIX_MAX_LENGTH
# characters (checked apart: pydantic's regex engine has no lookahead to bound it here).
_PREFIX_CHARS = "A-Za-z0-9_.-"
KEY_PREFIX_PATTERN = rf"^[{_PREFIX_CHARS}]*(\{{[{_PREFIX_CHARS}]+\}}[{_PREFIX_CHARS}]*)?$"
KEY_PREFIX_MAX_LENGTH = 64
_KEY_PREFIX = re.compile(KEY_PREFIX_PATTERN)


def valid_key_prefix(prefix: str) -> bool:
    """KEY_PREFIX's rule (``KEY_PREFIX_PATTERN`` and its length), for the other doors that take
    a prefix."""
    return 1 <= len(prefix) <= KEY_PREFIX_MAX_LENGTH and _KEY_PREFIX.fullmatch(prefix) is not None


def hash_tag(prefix: str) -> str | None:
    """The Redis Cluster hash tag of a valid prefix ("tp" of "{tp}-prod"), None without one."""
    start = prefix.find("{")
    return prefix[start + 1 : prefix.index("}", start)] if start >= 0 else None


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """ "5s,5m,30m,2h" -> seconds; ValueError on a bad item (a plain number is seconds)."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("empty; give delays such as 5s,5m,30m,2h")
    if len(items) > 49:
        raise ValueError(f"at most 49 delays, got {len(items)}")
    delays = []
    for item in items:
        m = _DURATION.match(item.lower())
        if m is None:
            raise ValueError(f"{item[:20]!r} is not a delay such as 5s, 5m, 2h or 0.5")
        seconds = float(m[1]) * _UNITS[m[2]]
        if not 0 < seconds <= MAX_RETRY_DELAY_SECONDS:
            raise ValueError(f"{item[:20]!r}: each delay must be > 0 and at most 24h")
        delays.append(seconds)
    return tuple(delays)


def redacted_url(url: str) -> str:
    """A URL without the password of its user part, for messages and ``repr``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host += f":{port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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


def _addresses(value: str | None) -> list[tuple[str, int]]:
    """ "host:port,[::1]:port" (already matched by _SENTINELS) as (host, port) pairs."""
    if not value:
        return []
    pairs = []
    for item in value.split(","):
        host, _, port = item.rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


class EventLoop(StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class SettingsError(Exception):
    """A setting has a value the service cannot start with; the message names the variable."""


class SettingsConflict(ValueError):
    """Settings that are valid one by one but not together; ``names`` are their variables."""

    def __init__(self, names: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.names = names
        self.message = message


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
    # How a secrets file readable by others is treated (config/secrets.py): refused, or loaded
    # with a warning. Before every *_FILE setting, which its validators read.
    secret_file_mode_check: FileModeCheck = FileModeCheck.REFUSE
    # The password of REDIS_URL's user, from a file (a Docker / Kubernetes secret), when the URL
    # carries none.
    redis_password_file: Path | None = None
    # rediss:// only: the CA that signed Redis' certificate (else the system's); the host name
    # is verified against it unless REDIS_URL says ssl_check_hostname=false.
    redis_tls_ca_file: Path | None = None
    # Redis Sentinel, for failover: "host:port,host:port". The worker and the CLI then ask the
    # sentinels for the primary of REDIS_SENTINEL_MASTER (again after a failover); REDIS_URL
    # still gives the database, user and password of the data nodes, its host is not used.
    redis_sentinels: str | None = Field(default=None, pattern=_SENTINELS)
    redis_sentinel_master: str = Field(default="mymaster", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Redis Cluster: "host:port,host:port", some nodes of the cluster (the client learns the
    # others from them, again after a failover). REDIS_URL then gives the user, password and
    # TLS of the nodes; its host is not used, and its database must be 0 (a cluster has only
    # that one). KEY_PREFIX must hold a hash tag (below).
    redis_cluster_nodes: str | None = Field(default=None, pattern=_SENTINELS)
    # A worker that cannot reach Redis at start logs each attempt and exits 1 after this long,
    # so the orchestrator's restart policy (and its logs) take over instead of silence.
    redis_startup_timeout_seconds: float = Field(default=60.0, ge=1.0, le=3600.0)
    threads_access_token: SecretStr | None = None
    threads_access_token_file: Path | None = None
    threads_api_base_url: str = Field(default=DEFAULT_API_BASE_URL, pattern=r"^https?://\S+$")
    threads_auth_mode: AuthMode = AuthMode.QUERY
    # The Threads user id that THREADS_ACCESS_TOKEN belongs to (for its quota); optional.
    threads_user_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    # Instagram containers (a poll's platform: api_client.platforms). graph.instagram.com for
    # Instagram Login tokens; https://graph.facebook.com/v23.0 for Facebook Login ones. The
    # token: the deployment's fallback for Instagram polls without an account (per-account
    # Instagram tokens: "instagram:<id>" in the tokens file, or INSTAGRAM_ACCESS_TOKEN_<id>).
    instagram_api_base_url: str = Field(
        default=INSTAGRAM.default_base_url, pattern=r"^https?://\S+$"
    )
    instagram_access_token: SecretStr | None = None
    instagram_access_token_file: Path | None = None
    instagram_user_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    # Per-account tokens: a JSON object {"<user id>": "<token>"}, re-read when it changes, so a
    # pipeline that refreshes its 60-day tokens just rewrites the file (or the mounted secret).
    threads_tokens_file: Path | None = None
    # Token lifecycle (README "Token lifecycle"). Opt-in: refresh a token at least 24 h old
    # within this margin of its expiry, once, by one worker, written back to the tokens file
    # (or to TOKENS_REFRESHED_FILE when the tokens file is a read-only mount).
    token_refresh: bool = False
    token_refresh_margin_days: float = Field(default=10.0, gt=0, le=59)
    tokens_refreshed_file: Path | None = None
    # A failed refresh is tried again after this, doubling up to the cap.
    token_refresh_backoff_seconds: float = Field(default=300.0, gt=0, le=86400)
    token_refresh_backoff_max_seconds: float = Field(default=6 * 3600.0, gt=0, le=7 * 86400)
    # How often a worker publishes its tokens' fingerprints and expiry to Redis and looks for
    # refreshes due.
    token_sync_seconds: float = Field(default=60.0, gt=0, le=3600)

    # Meta: "query once per minute, for no more than 5 minutes". Fractions are allowed so that
    # tests and the demo can compress the schedule; production keeps the defaults.
    poll_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    poll_max_seconds: float = Field(default=300.0, ge=0, le=86400)

    result_ttl_seconds: int = Field(default=7 * 86400, ge=60)
    events_max_len: int = Field(default=100_000, ge=100)
    worker_max_jobs: int = Field(default=200, ge=1, le=100_000)
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # A run that outlives this is cut off and its job runs again later (checked below: well
    # above the HTTP timeout).
    job_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # How long a claim gives a run its job; the worker renews it every third of this while the
    # run works (worker/core/lease.py), so a SIGKILLed or frozen worker's jobs are due again
    # within this, whatever JOB_TIMEOUT_SECONDS. At least 0.3 s: a renewal every 0.1 s at most
    # (one round trip for all of a worker's jobs); under a second, a Redis blip or a busy event
    # loop can cost a run its lease.
    lease_seconds: float = Field(default=6.0, ge=0.3, le=600)

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
    # Before a publish call, its claim must be held by this many Redis replicas (WAIT), so a
    # failover cannot bring back a primary without it and publish twice. Unset: as many as
    # the primary has had connected in the last 5 minutes (INFO replication; 0 without
    # replicas). Not acknowledged within the timeout: not published yet, tried again later.
    publish_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    publish_wait_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    # Meta: "wait on average 30 seconds before publishing a Threads media container"; counted
    # from enqueue (the pipeline enqueues right after creating the container).
    publish_min_age_seconds: float = Field(default=30.0, ge=0, le=3600)
    # A reply waits this long after FINISHED instead of PUBLISH_GRACE_SECONDS: video replies
    # published a few seconds after FINISHED came out as standalone posts (lost reply_to_id),
    # so a few seconds is known to be too short; 30 s is Meta's documented average wait, and
    # a reply has 24 h before its container expires.
    publish_reply_settle_seconds: float = Field(default=30.0, ge=0, le=3600)

    # Webhooks on final states (a default URL here, or one per enqueue).
    webhook_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    # One secret, or several separated by commas or spaces (all sign: rotation); each
    # "whsec_<base64>" (Standard Webhooks) or any other text (config/webhook_keys.py).
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None
    # Which signature headers deliveries carry: Standard Webhooks', the old
    # X-Threads-Poller-Signature (receivers written for it), or both.
    webhook_signature_scheme: SignatureScheme = SignatureScheme.STANDARD
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Deliveries one worker process runs at once: a budget of their own, apart from the checks'
    # (WORKER_MAX_JOBS / API_MAX_CONCURRENCY), so receivers that hang hold delivery slots only.
    # Larger than the checks' by default: a delivery mostly waits on its receiver.
    webhook_concurrency: int = Field(default=100, ge=1, le=10_000)
    # The delays between attempts (WEBHOOK_RETRY_SCHEDULE, default above); attempts: one more
    # than the delays unless WEBHOOK_MAX_ATTEMPTS says otherwise (the last delay then repeats).
    webhook_retry_schedule: str | None = Field(default=None, max_length=1024)
    webhook_max_attempts: int | None = Field(default=None, ge=1, le=50)
    # The schedule before WEBHOOK_RETRY_SCHEDULE: this delay, doubling (kept for old configs).
    webhook_backoff_seconds: float | None = Field(default=None, gt=0)
    # The SSRF guard (worker/core/targets.py): host names, *.suffix names, IPs and CIDRs always
    # allowed (receivers inside the deployment), and whether private networks are.
    webhook_allowed_hosts: str = Field(default="", max_length=16384)
    webhook_allow_private_addresses: bool = False

    # No ":" (so "tp" and "tp:eu" cannot own each other's keys through "tp:*"), no glob or ACL
    # characters (* ? [ ] ~ % space): the prefix goes into ACL key patterns verbatim.
    # In cluster mode it holds a hash tag ("{tp}"), so that every key of the deployment (arq's
    # job keys included, through the job ids) hashes to one slot (README "Cluster mode").
    key_prefix: str = Field(
        default="threads-poller",
        min_length=1,
        max_length=KEY_PREFIX_MAX_LENGTH,
        pattern=KEY_PREFIX_PATTERN,
    )
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

    # --- issue 21: nothing crosses the trust boundary (serve's doors, /metrics) ---
    # Where /metrics listens (worker and serve): loopback unless a deployment says otherwise
    # (the image and compose set 0.0.0.0, where the network is the container's own).
    metrics_host: str = Field(default="127.0.0.1", pattern=r"^[A-Za-z0-9_.:\[\]-]{1,255}$")
    # serve's /metrics port; unset: METRICS_PORT + 1 (9101), so that a worker and serve on one
    # host never fight over a port; 0 (or METRICS_PORT=0) turns it off.
    serve_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Event streams (GET /v1/events) and long polls (?wait=) open at once in one serve process,
    # in all (503 beyond) and per API key (429 beyond); each holds a Redis connection.
    api_max_event_streams: int = Field(default=64, ge=1, le=10_000)
    api_max_long_polls: int = Field(default=64, ge=1, le=10_000)
    api_max_waits_per_key: int = Field(default=16, ge=1, le=10_000)
    # Redis connections of serve's ordinary requests (streams and long polls add their caps):
    # serve never holds more than the sum, whatever the load, so workers are never refused.
    api_redis_max_connections: int = Field(default=32, ge=2, le=10_000)
    # A connection that has not sent a whole request (headers) within this, or stays idle
    # between requests this long, is closed.
    api_idle_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    # A request body not received within this is refused (408).
    api_body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Open client connections of serve at most; beyond, the idle ones (no request under way)
    # are closed, oldest first, so that half-sent requests cannot shut out a key holder.
    api_max_connections: int = Field(default=512, ge=16, le=1_000_000)
    # Behind a TLS-terminating proxy: trust its X-Forwarded-Proto (the console's cookie is then
    # Secure). Only when nothing else can reach serve's port.
    trusted_proxy: bool = False

    # --- issue 21: producers scoped (config/producers.py) ---
    # Named producers and what each may ask for (JSON); each gets its own intake stream and may
    # have API keys ("NAME=KEY" in API_KEYS). Unset: one producer, "default", allowed everything.
    producers: str | None = Field(default=None, max_length=1 << 20)
    # The same JSON from a file (mode-checked like every secrets file); not with PRODUCERS.
    producers_file: Path | None = None

    # Set by the validators: what a worker logs once logging is up (a too-open secrets file).
    _warnings: list[str] = PrivateAttr(default_factory=list)
    _redis_password: str | None = PrivateAttr(default=None)
    _producers: Producers = PrivateAttr(default_factory=Producers.unrestricted)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redacted_url(value) if name == "redis_url" else value

    @field_validator(
        "threads_tokens_file",
        "threads_access_token_file",
        "instagram_access_token_file",
        "webhook_secret_file",
        "redis_password_file",
        "api_keys_file",
        "api_read_keys_file",
        "producers_file",
    )
    @classmethod
    def _check_secret_file_mode(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # The tokens file may appear later (it is re-read); one that exists now is judged now.
        if value is None or (info.field_name == "threads_tokens_file" and not value.exists()):
            return value
        check = info.data.get("secret_file_mode_check", FileModeCheck.REFUSE)
        try:
            problem = file_mode_problem(value)
        except OSError as exc:
            raise ValueError(f"{value!r} cannot be read ({type(exc).__name__})") from None
        if problem is not None and check is FileModeCheck.REFUSE:
            raise ValueError(
                f"{value} is {problem}; chmod 600 it (Kubernetes: defaultMode 0400, or 0440 "
                "with fsGroup), or set SECRET_FILE_MODE_CHECK=warn"
            )
        return value

    @model_validator(mode="after")
    def _read_secret_files(self) -> Self:
        for secret, file in (
            ("threads_access_token", "threads_access_token_file"),
            ("instagram_access_token", "instagram_access_token_file"),
            ("webhook_secret", "webhook_secret_file"),
        ):
            path = getattr(self, file)
            if path is None:
                continue
            if getattr(self, secret) is not None:
                raise SettingsConflict(
                    (secret.upper(), file.upper()),
                    f"set {secret.upper()} or {file.upper()}, not both",
                )
            setattr(self, secret, SecretStr(self._read(path, file)))
        if self.redis_password_file is not None:
            if self.redis_url_password():
                raise ValueError("REDIS_URL has a password: set it there or in REDIS_PASSWORD_FILE")
            self._redis_password = self._read(self.redis_password_file, "redis_password_file")
        return self

    @model_validator(mode="after")
    def _read_producers(self) -> Self:
        text = self.producers
        if self.producers_file is not None:
            if text is not None:
                raise SettingsConflict(
                    ("PRODUCERS", "PRODUCERS_FILE"), "set PRODUCERS or PRODUCERS_FILE, not both"
                )
            text = self._read(self.producers_file, "producers_file")
        try:
            self._producers = parse_producers(text)
        except ProducersError as exc:
            name = "PRODUCERS_FILE" if self.producers_file is not None else "PRODUCERS"
            raise ValueError(f"{name}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _check_webhook_secrets(self) -> Self:
        # After _read_secret_files: WEBHOOK_SECRET_FILE's content is in webhook_secret by now.
        if self.webhook_secret is None:
            return self
        try:
            parse_secrets(self.webhook_secret.get_secret_value())
        except WebhookKeyError as exc:
            name = "WEBHOOK_SECRET_FILE" if self.webhook_secret_file else "WEBHOOK_SECRET"
            raise ValueError(f"{name}: {exc}") from None
        return self

    def webhook_signing_secrets(self) -> tuple[SigningSecret, ...]:
        """WEBHOOK_SECRET's secrets in the order written (empty: none set). Parsed on each call
        (a split and a base64 decoding): a copy with another webhook_secret (model_copy runs
        no validator) must not sign with the first one's."""
        if self.webhook_secret is None:
            return ()
        return parse_secrets(self.webhook_secret.get_secret_value())

    def producer_scopes(self) -> Producers:
        """The producers (PRODUCERS / PRODUCERS_FILE), ``default`` always among them."""
        return self._producers

    def _read(self, path: Path, field: str) -> str:
        try:
            value, warning = read_secret_file(
                path, name=field.upper(), check=self.secret_file_mode_check
            )
        except SecretFileError as exc:
            raise ValueError(f"{field.upper()}: {exc}") from None
        if warning:
            self._warnings.append(warning)
        return value

    def warnings(self) -> list[str]:
        """What loading the settings found worth a warning (logged by the worker at start)."""
        return list(self._warnings)

    def redis_url_password(self) -> str | None:
        try:
            return urlsplit(self.redis_url).password
        except ValueError:
            return None

    def redis_password(self) -> str | None:
        """REDIS_URL's password, or REDIS_PASSWORD_FILE's content (None: neither)."""
        return self._redis_password or self.redis_url_password()

    def secrets(self) -> list[str]:
        """Every secret value these settings hold, for log redaction."""
        values = [self.token(), self.redis_password()]
        if self.webhook_secret is not None:
            values.append(self.webhook_secret.get_secret_value())
            # Each secret alone too (a log may show one); the whole value is there all the same.
            with contextlib.suppress(WebhookKeyError):
                values.extend(s.text for s in self.webhook_signing_secrets())
        return [v for v in dict.fromkeys(values) if v]

    def webhook_retry_delays(self) -> tuple[float, ...]:
        """The wait after attempt 1, 2, ... (one fewer than the attempts)."""
        if self.webhook_backoff_seconds is not None:
            attempts = self.webhook_max_attempts or LEGACY_WEBHOOK_MAX_ATTEMPTS
            return tuple(
                min(self.webhook_backoff_seconds * 2**k, 10 * 86400.0) for k in range(attempts - 1)
            )
        schedule = parse_retry_schedule(
            self.webhook_retry_schedule or DEFAULT_WEBHOOK_RETRY_SCHEDULE
        )
        attempts = self.webhook_max_attempts or len(schedule) + 1
        return tuple(schedule[min(k, len(schedule) - 1)] for k in range(attempts - 1))

    def webhook_attempts(self) -> int:
        return len(self.webhook_retry_delays()) + 1

    def webhook_retry_delay(self, attempt: int) -> float:
        """How long to wait after failed attempt ``attempt`` (1-based)."""
        delays = self.webhook_retry_delays()
        return delays[min(attempt, len(delays)) - 1] if delays else 0.0

    @model_validator(mode="after")
    def _check_webhook_retries(self) -> Self:
        if self.webhook_backoff_seconds is not None and self.webhook_retry_schedule is not None:
            raise SettingsConflict(
                ("WEBHOOK_RETRY_SCHEDULE", "WEBHOOK_BACKOFF_SECONDS"),
                "set WEBHOOK_RETRY_SCHEDULE or WEBHOOK_BACKOFF_SECONDS (the old doubling "
                "schedule), not both",
            )
        if self.webhook_retry_schedule is not None:
            try:
                parse_retry_schedule(self.webhook_retry_schedule)
            except ValueError as exc:
                raise ValueError(f"WEBHOOK_RETRY_SCHEDULE: {exc}") from None
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty without Sentinel."""
        return _addresses(self.redis_sentinels)

    def cluster_addresses(self) -> list[tuple[str, int]]:
        """REDIS_CLUSTER_NODES as (host, port) pairs; empty outside cluster mode."""
        return _addresses(self.redis_cluster_nodes)

    @model_validator(mode="after")
    def _check_cluster(self) -> Self:
        if not self.redis_cluster_nodes:
            return self
        if self.redis_sentinels:
            raise SettingsConflict(
                ("REDIS_CLUSTER_NODES", "REDIS_SENTINELS"),
                "set REDIS_CLUSTER_NODES (Redis Cluster) or REDIS_SENTINELS (Sentinel), not both",
            )
        if hash_tag(self.key_prefix) is None:
            raise SettingsConflict(
                ("KEY_PREFIX", "REDIS_CLUSTER_NODES"),
                f"KEY_PREFIX {self.key_prefix!r} holds no hash tag: in cluster mode every key of "
                "a deployment must hash to one slot (the scripts touch several keys at once); "
                "put the prefix in braces, e.g. KEY_PREFIX={tp}",
            )
        if self.redis_url.startswith("unix://"):
            raise SettingsConflict(
                ("REDIS_URL", "REDIS_CLUSTER_NODES"),
                "REDIS_URL must be redis:// or rediss:// with REDIS_CLUSTER_NODES (the nodes are "
                "reached over TCP); it gives only the user, password and TLS",
            )
        parts = urlsplit(self.redis_url)
        databases = {parts.path.strip("/"), *parse_qs(parts.query).get("db", [])} - {"", "0"}
        if databases:
            raise SettingsConflict(
                ("REDIS_URL", "REDIS_CLUSTER_NODES"),
                f"REDIS_URL names database {min(databases)[:20]!r}: a Redis Cluster has only "
                "database 0",
            )
        return self

    @model_validator(mode="after")
    def _check_webhook_secret(self) -> Self:
        if self.webhook_url and not self.webhook_secret:
            raise SettingsConflict(
                ("WEBHOOK_URL", "WEBHOOK_SECRET"),
                "WEBHOOK_SECRET must be set when WEBHOOK_URL is (deliveries are signed)",
            )
        return self

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.job_timeout_seconds < 2 * self.http_timeout_seconds:
            raise SettingsConflict(
                ("JOB_TIMEOUT_SECONDS", "HTTP_TIMEOUT_SECONDS"),
                "JOB_TIMEOUT_SECONDS must be at least twice HTTP_TIMEOUT_SECONDS "
                f"({self.job_timeout_seconds} < 2 x {self.http_timeout_seconds})",
            )
        return self

    def longest_poll_seconds(self) -> float:
        """The longest a poll and its webhook can take from enqueue to done: the window, all the
        delay throttling and pacing may add, every publish attempt, every webhook retry."""
        # The first attempt waits the longer of the grace and a reply's settle time, and the
        # minimum age; each "not ready" doubles the wait (worker/core/planner.py).
        publish = (
            max(self.publish_grace_seconds, self.publish_reply_settle_seconds)
            + self.publish_min_age_seconds
            + sum(
                max(
                    min(self.publish_grace_seconds * 2**k, max(300.0, self.publish_grace_seconds)),
                    self.poll_interval_seconds,
                )
                for k in range(self.publish_max_attempts)
            )
        )
        delays = self.webhook_retry_delays()
        webhook = sum(delays) + (len(delays) + 1) * (self.webhook_timeout_seconds + 2)
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
            raise SettingsConflict(
                ("RESULT_TTL_SECONDS", "POLL_MAX_SECONDS", "THROTTLE_MAX_DELAY_SECONDS"),
                f"RESULT_TTL_SECONDS ({self.result_ttl_seconds}) is shorter than the longest "
                f"possible poll ({math.ceil(longest)} s: POLL_MAX_SECONDS + "
                "THROTTLE_MAX_DELAY_SECONDS + publish attempts + webhook retries + "
                "JOB_TIMEOUT_SECONDS); raise it or shorten those",
            )
        return self

    def serve_metrics(self) -> int:
        """The port of serve's /metrics (0: off)."""
        if self.serve_metrics_port is not None:
            return self.serve_metrics_port
        return self.metrics_port + 1 if 0 < self.metrics_port < 65535 else 0

    def token(self) -> str | None:
        return self.threads_access_token.get_secret_value() if self.threads_access_token else None

    def api_base_url(self, platform: Platform) -> str:
        """Where a platform's Graph API is (THREADS_API_BASE_URL, INSTAGRAM_API_BASE_URL)."""
        return (
            self.instagram_api_base_url
            if platform.name is PlatformName.INSTAGRAM
            else self.threads_api_base_url
        )

    def default_tokens(self) -> dict[str, str]:
        """Each platform's fallback token (polls without an account), by platform name."""
        out: dict[str, str] = {}
        for name, secret in (
            (PlatformName.THREADS, self.threads_access_token),
            (PlatformName.INSTAGRAM, self.instagram_access_token),
        ):
            if secret is not None:
                out[name.value] = secret.get_secret_value()
        return out

    def platform_user_id(self, platform: Platform) -> str | None:
        """The user id a platform's fallback token belongs to (THREADS_USER_ID,
        INSTAGRAM_USER_ID), if set."""
        if platform.name is PlatformName.INSTAGRAM:
            return self.instagram_user_id
        return self.threads_user_id


_NAMED = re.compile(r"^Value error, ([A-Z][A-Z0-9_]+): (.*)$", re.DOTALL)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, SettingsConflict):
                # A rule across variables: name them all, and say the rule without pydantic's
                # "Value error, " prefix.
                lines.append(f"invalid settings {', '.join(cause.names)}: {cause.message}")
                continue
            loc = "_".join(str(part) for part in err["loc"]).upper()
            msg = err["msg"]
            # A check about one variable, made across settings, names it first ("NAME: why").
            named = _NAMED.match(msg) if not loc else None
            if named:
                loc, msg = named[1], f"Value error, {named[2]}"
            # Never echo the input: it may be a token.
            lines.append(f"invalid setting {loc or 'SETTINGS'}: {msg}")
        raise SettingsError("; ".join(lines)) from None
