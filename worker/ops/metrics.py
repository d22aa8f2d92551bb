"""Prometheus metrics: each worker process's own (``METRICS_PORT``), and the deployment's
(exported once, by ``threads-poller serve``).

Two registries:

- the default one, served by every worker process: what that process did (checks by answer and
  by failure, API latency, throttling, final states, intake acceptances and dead letters, webhook
  deliveries, publish calls) and how busy it is (jobs running, job slots: the checks' and the
  deliveries', two budgets). Sum them over workers.
- ``SERVE_REGISTRY``, served by ``serve`` only: the shared Redis state, sampled every
  ``SAMPLE_SECONDS`` (containers in flight and past their deadline, both queues' depth and lag,
  dead-letter streams, live workers and their saturation, throttled accounts), plus ``serve``'s
  own HTTP metrics (``worker.web``). One process reports each value, so replicas of the workers
  can neither repeat nor contradict it.

Every labelled series is created at start with all its label values (a ``rate()`` sees the
first event), and no label is ever empty. Label values are bounded: API statuses outside the
documented set are counted as ``OTHER`` (the result hash keeps the verbatim value), so an API
change cannot explode the series count.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from api_client.errors import ThreadsError
from api_client.models import ApiStatus, ContainerStatus
from api_client.platforms import PLATFORMS, platform_or_default
from api_client.policy import ErrorKind, classify
from worker.core.decisions import Decision
from worker.core.publishing import PublishVerdict
from worker.core.states import FINAL_STATES, State
from worker.core.webhooks import WebhookOutcome
from worker.ops.health import live_beats
from worker.ops.stats import MINUTES, note_inflight
from worker.store.admin import AdminStore

log = logging.getLogger("threads_poller.metrics")

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

SAMPLE_SECONDS = 5.0
_KNOWN_STATUSES = frozenset(s.value for s in State)
OTHER = "OTHER"
API_STATUSES = (*(s.value for s in ApiStatus), OTHER)
ERROR_KINDS = tuple(k.value for k in ErrorKind)
# What a worker can end a poll with (CANCELLED comes from an operator, not a worker).
WORKER_FINAL_STATES = tuple(sorted(s.value for s in FINAL_STATES if s is not State.CANCELLED))

CHECKS = Counter(
    "threads_poller_checks",
    "Checks the API answered with a status, by that status (OTHER: one we do not know). "
    "Failed checks: threads_poller_check_errors_total.",
    ["status", "platform"],
)
CHECK_ERRORS = Counter(
    "threads_poller_check_errors",
    "Checks that asked the API and failed, by the failure's kind (the error policy).",
    ["error_kind", "platform"],
)
API_REQUEST_SECONDS = Histogram(
    "threads_poller_api_request_duration_seconds",
    "Graph API status calls, end to end (retries by aiohttp included), by outcome.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0),
)
API_THROTTLED = Counter(
    "threads_poller_api_throttled",
    "Graph API answers classified as throttling (codes 4, 17, 32, 341, 613, HTTP 429).",
)
CHECK_LAG = Histogram(
    "threads_poller_check_lag_seconds",
    "How late a check started after it was due (next_check_at, or enqueued_at for the first).",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
FINAL_STATES_TOTAL = Counter(
    "threads_poller_final_states",
    "Containers that reached a final state in this process, by status.",
    ["status", "platform"],
)
INTAKE_ACCEPTED = Counter(
    "threads_poller_intake_accepted", "Intake stream entries turned into polls by this process."
)
INTAKE_DEAD_LETTERS = Counter(
    "threads_poller_intake_dead_letters",
    "Intake stream entries this process moved to the dead-letter stream.",
)
WEBHOOK_DELIVERIES = Counter(
    "threads_poller_webhook_deliveries",
    "Webhook delivery attempts settled by this process: delivered, retry (failed, tried again "
    "later) or dead (failed for good: dead-lettered).",
    ["outcome"],
)
PUBLISHES = Counter(
    "threads_poller_publishes",
    "Auto-publish calls (threads_publish, Instagram's media_publish) made by this process, by "
    "what the answer means.",
    ["verdict", "platform"],
)
JOBS_RUNNING = Gauge(
    "threads_poller_worker_jobs_running",
    "Check runs in progress in this worker process (saturation: divide by the job slots).",
)
JOB_SLOTS = Gauge(
    "threads_poller_worker_job_slots",
    "Check runs this worker process takes at once (min(WORKER_MAX_JOBS, API_MAX_CONCURRENCY)).",
)
# The deliveries' own budget (WEBHOOK_CONCURRENCY): full while receivers hang, which delays
# deliveries only, so it is apart from the checks' saturation above.
WEBHOOK_JOBS_RUNNING = Gauge(
    "threads_poller_worker_webhook_jobs_running",
    "Webhook delivery runs in progress in this worker process.",
)
WEBHOOK_JOB_SLOTS = Gauge(
    "threads_poller_worker_webhook_job_slots",
    "Webhook delivery runs this worker process takes at once (WEBHOOK_CONCURRENCY).",
)
TOKEN_REFRESH_OUTCOMES = ("refreshed", "failed", "rejected", "fenced")
TOKEN_REFRESHES = Counter(
    "threads_poller_token_refreshes",
    "Token refreshes this worker process tried (TOKEN_REFRESH=1), by outcome: refreshed, failed "
    "(retried with back-off), rejected (the API answered 190: a new sign-in is needed), fenced "
    "(its lease was lost; another worker took over).",
    ["outcome"],
)

# Pre-initialised: every series exists from the start, at 0.
for _outcome in TOKEN_REFRESH_OUTCOMES:
    TOKEN_REFRESHES.labels(outcome=_outcome)
for _platform in PLATFORMS:
    for _status in API_STATUSES:
        CHECKS.labels(status=_status, platform=_platform)
    for _kind in ERROR_KINDS:
        CHECK_ERRORS.labels(error_kind=_kind, platform=_platform)
    for _status in WORKER_FINAL_STATES:
        FINAL_STATES_TOTAL.labels(status=_status, platform=_platform)
    for _verdict in PublishVerdict:
        PUBLISHES.labels(verdict=_verdict.value, platform=_platform)
for _outcome in ("ok", "error"):
    API_REQUEST_SECONDS.labels(outcome=_outcome)
for _outcome in WebhookOutcome:
    WEBHOOK_DELIVERIES.labels(outcome=_outcome.value)

# ----- the deployment's gauges: served by `serve` only ----------------------------------------

SERVE_REGISTRY = CollectorRegistry(auto_describe=True)

IN_FLIGHT = Gauge(
    "threads_poller_containers_in_flight",
    "Containers being polled (ZCARD of {prefix}:inflight).",
    registry=SERVE_REGISTRY,
)
PAST_DEADLINE = Gauge(
    "threads_poller_polls_past_deadline",
    "Containers still in flight well past their deadline (the window, plus everything "
    "throttling may add, plus a job timeout and an interval): stuck polls.",
    registry=SERVE_REGISTRY,
)
QUEUE_JOBS = Gauge(
    "threads_poller_queue_jobs",
    "Jobs in the checks' queue, due or scheduled (ZCARD of {prefix}:queue).",
    registry=SERVE_REGISTRY,
)
QUEUE_DUE_JOBS = Gauge(
    "threads_poller_queue_due_jobs",
    "Jobs of the checks' queue whose due time has passed (waiting for a worker, or running now).",
    registry=SERVE_REGISTRY,
)
QUEUE_LAG = Gauge(
    "threads_poller_queue_lag_seconds",
    "Seconds since the checks' oldest due job became due; 0 when nothing is due.",
    registry=SERVE_REGISTRY,
)
WEBHOOK_QUEUE_JOBS = Gauge(
    "threads_poller_webhook_queue_jobs",
    "Webhook deliveries queued, due or scheduled (ZCARD of {prefix}:webhooks:queue).",
    registry=SERVE_REGISTRY,
)
WEBHOOK_QUEUE_DUE_JOBS = Gauge(
    "threads_poller_webhook_queue_due_jobs",
    "Webhook deliveries whose due time has passed (waiting for a worker, or running now).",
    registry=SERVE_REGISTRY,
)
WEBHOOK_QUEUE_LAG = Gauge(
    "threads_poller_webhook_queue_lag_seconds",
    "Seconds since the oldest due webhook delivery became due; 0 when none is due.",
    registry=SERVE_REGISTRY,
)
DEAD_LETTER_STREAM = Gauge(
    "threads_poller_intake_dead_letter_stream_length",
    "Entries in the intake dead-letter stream {prefix}:intake:dead (XLEN).",
    registry=SERVE_REGISTRY,
)
WEBHOOK_DEAD_LETTER_STREAM = Gauge(
    "threads_poller_webhook_dead_letter_stream_length",
    "Entries in the webhook dead-letter stream {prefix}:webhooks:dead (XLEN).",
    registry=SERVE_REGISTRY,
)
WORKERS_ALIVE = Gauge(
    "threads_poller_workers_alive",
    "Worker processes whose heartbeat is younger than its TTL.",
    registry=SERVE_REGISTRY,
)
WORKERS_ACCEPTING = Gauge(
    "threads_poller_workers_accepting",
    "Live worker processes taking jobs (not draining after SIGTERM).",
    registry=SERVE_REGISTRY,
)
WORKER_SATURATION = Gauge(
    "threads_poller_worker_saturation_ratio",
    "Job runs in progress over job slots, summed over the live workers (from their heartbeats); "
    "1 means every slot is busy.",
    registry=SERVE_REGISTRY,
)
ACCOUNTS_THROTTLED = Gauge(
    "threads_poller_accounts_throttled",
    "Accounts whose checks are paused for throttling now.",
    registry=SERVE_REGISTRY,
)
ACCOUNT_LONGEST_THROTTLE = Gauge(
    "threads_poller_account_longest_throttle_seconds",
    "How long the longest current episode of throttling of any account has lasted; 0 when none.",
    registry=SERVE_REGISTRY,
)
ACCOUNTS_TOKEN_REJECTED = Gauge(
    "threads_poller_accounts_token_rejected",
    "Accounts whose current token the API rejected (their checks fail until it is replaced).",
    registry=SERVE_REGISTRY,
)
# One series per account, for the TOKEN_EXPIRY_SERIES accounts whose tokens expire first (the
# alert needs those; a deployment of 100,000 accounts must not make 100,000 series).
TOKEN_EXPIRY_SERIES = 100
TOKEN_EXPIRES_IN = Gauge(
    "threads_poller_token_expires_in_seconds",
    "Seconds until the account's access token expires (negative: expired), for the "
    f"{TOKEN_EXPIRY_SERIES} accounts whose tokens expire first among those with a known expiry.",
    ["account"],
    registry=SERVE_REGISTRY,
)
_expiry_exported: set[str] = set()
TOKEN_EXPIRES_IN_MIN = Gauge(
    "threads_poller_token_expires_in_min_seconds",
    "Seconds until the first of the accounts' access tokens expires (+Inf: no expiry known).",
    registry=SERVE_REGISTRY,
)
ACCOUNTS_TOKEN_REFRESH_FAILING = Gauge(
    "threads_poller_accounts_token_refresh_failing",
    "Accounts whose last token refresh failed (it is retried with back-off).",
    registry=SERVE_REGISTRY,
)
SAMPLE_FAILURES = Counter(
    "threads_poller_redis_sample_failures",
    "Rounds in which the Redis gauges could not be sampled (they keep their last value).",
    registry=SERVE_REGISTRY,
)


def status_label(status: str | None) -> str:
    if not status:
        return OTHER
    return status if status in _KNOWN_STATUSES else OTHER


@functools.cache
def _api_seconds(outcome: str) -> Any:
    # One per check: cached like the children below (labels() locks and builds a key).
    return API_REQUEST_SECONDS.labels(outcome=outcome)


def observe_api_call(outcome: ContainerStatus | ThreadsError, seconds: float) -> None:
    """One Graph API status call: its latency and, for a throttling answer, a throttle event."""
    if isinstance(outcome, ThreadsError):
        _api_seconds("error").observe(seconds)
        if classify(outcome) == ErrorKind.THROTTLED:
            API_THROTTLED.inc()
    else:
        _api_seconds("ok").observe(seconds)


@functools.cache
def _checks(status: str, platform: str) -> Any:
    # labels() takes a lock and builds a key on every call; label values are bounded (see the
    # module docstring), so caching each child is bounded too.
    return CHECKS.labels(status=status, platform=platform)


@functools.cache
def _check_errors(kind: str, platform: str) -> Any:
    return CHECK_ERRORS.labels(error_kind=kind, platform=platform)


@functools.cache
def _final_states(status: str, platform: str) -> Any:
    return FINAL_STATES_TOTAL.labels(status=status, platform=platform)


def observe_check(
    decision: Decision,
    *,
    checked: bool,
    written: bool,
    lag_s: float | None = None,
    platform: str = "threads",
) -> None:
    """One check run: ``checked`` when it asked the API, ``written`` when its outcome was stored.
    ``platform``: the poll's (a label: two values, ``api_client.platforms``)."""
    platform = platform_or_default(platform).name.value
    if checked:
        if decision.error is not None:
            kind = str(decision.error.kind)
            _check_errors(kind if kind in ERROR_KINDS else ErrorKind.UNKNOWN.value, platform).inc()
        else:
            label = status_label(decision.last_api_status)
            _checks(label if label in API_STATUSES else OTHER, platform).inc()
        if lag_s is not None:
            CHECK_LAG.observe(max(0.0, lag_s))
        if written:
            MINUTES.note_check()
    if written and decision.final:
        _final_states(status_label(decision.status), platform).inc()
        MINUTES.note_final(status_label(decision.status))


def observe_intake(*, accepted: int, dead_lettered: int) -> None:
    if accepted:
        INTAKE_ACCEPTED.inc(accepted)
    if dead_lettered:
        INTAKE_DEAD_LETTERS.inc(dead_lettered)


def observe_webhook(outcome: WebhookOutcome | str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=str(outcome)).inc()


def observe_publish(verdict: PublishVerdict, platform: str = "threads") -> None:
    PUBLISHES.labels(verdict=verdict.value, platform=platform_or_default(platform).name.value).inc()


def note_token_refresh(outcome: str) -> None:
    TOKEN_REFRESHES.labels(outcome=outcome).inc()


def track_jobs(running: Callable[[], int], slots: int) -> None:
    """This worker's saturation (its checks): ``running()`` is read at each scrape."""
    JOBS_RUNNING.set_function(running)
    JOB_SLOTS.set(slots)


def track_deliveries(running: Callable[[], int], slots: int) -> None:
    """The same for this worker's webhook deliveries (their own slots)."""
    WEBHOOK_JOBS_RUNNING.set_function(running)
    WEBHOOK_JOB_SLOTS.set(slots)


@dataclass(frozen=True, slots=True)
class DeploymentSample:
    """What one round of ``sample`` read (the gauges' values)."""

    inflight: int
    past_deadline: int
    queued: int
    due: int
    lag_s: float
    # The same for the webhook deliveries' queue.
    webhooks_queued: int
    webhooks_due: int
    webhooks_lag_s: float
    intake_dead: int
    webhook_dead: int
    workers_alive: int
    workers_accepting: int
    saturation: float
    accounts_throttled: int
    longest_throttle_s: float
    tokens_rejected: int
    # Seconds to expiry of the tokens that expire first (account -> s), at most
    # TOKEN_EXPIRY_SERIES of them; the first of all (None: none known).
    token_expiry: dict[str, float]
    token_expiry_min_s: float | None
    token_refresh_failing: int


async def sample(
    admin: AdminStore, now: float | None = None, *, overdue_after: float = 0.0
) -> DeploymentSample:
    """Read the shared state into the deployment's gauges ("due" and "past" by Redis' clock).

    ``overdue_after``: seconds past its deadline after which a poll counts as stuck."""
    redis, keys = admin.redis, admin.keys
    if now is None:
        seconds, micros = await redis.time()
        now = float(seconds) + micros / 1e6
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.inflight)
        pipe.zcount(keys.inflight, "-inf", now - overdue_after)
        for queue in (keys.queue, keys.webhook_queue):
            pipe.zcard(queue)
            # Jobs are scored by due time in ms: everything up to now is due.
            pipe.zcount(queue, "-inf", now_ms)
            pipe.zrangebyscore(queue, "-inf", now_ms, start=0, num=1, withscores=True)
        pipe.xlen(keys.dead_letters)
        pipe.xlen(keys.webhook_dead_letters)
        (
            inflight,
            past,
            queued,
            due,
            oldest,
            hooks_queued,
            hooks_due,
            hooks_oldest,
            dead,
            hooks_dead,
        ) = await pipe.execute()
    _, beats = await live_beats(redis, keys)
    accounts = await admin.all_accounts()
    running = sum(b.jobs.get("ongoing", 0) for b in beats)
    slots = sum(b.jobs.get("slots", 0) for b in beats)
    throttled = [a for a in accounts if a.throttled(now)]
    expiring = sorted(
        ((a.account, a.token_expires_at - now) for a in accounts if a.token_expires_at is not None),
        key=lambda pair: pair[1],
    )
    got = DeploymentSample(
        inflight=int(inflight),
        past_deadline=int(past),
        queued=int(queued),
        due=int(due),
        lag_s=_lag(now_ms, oldest),
        webhooks_queued=int(hooks_queued),
        webhooks_due=int(hooks_due),
        webhooks_lag_s=_lag(now_ms, hooks_oldest),
        intake_dead=int(dead),
        webhook_dead=int(hooks_dead),
        workers_alive=len(beats),
        workers_accepting=sum(1 for b in beats if b.accepting),
        saturation=running / slots if slots else 0.0,
        accounts_throttled=len(throttled),
        longest_throttle_s=max((a.throttled_for(now) for a in throttled), default=0.0),
        tokens_rejected=sum(1 for a in accounts if a.token_rejected),
        token_expiry=dict(expiring[:TOKEN_EXPIRY_SERIES]),
        token_expiry_min_s=expiring[0][1] if expiring else None,
        token_refresh_failing=sum(1 for a in accounts if a.token_refresh_failures),
    )
    IN_FLIGHT.set(got.inflight)
    PAST_DEADLINE.set(got.past_deadline)
    QUEUE_JOBS.set(got.queued)
    QUEUE_DUE_JOBS.set(got.due)
    QUEUE_LAG.set(got.lag_s)
    WEBHOOK_QUEUE_JOBS.set(got.webhooks_queued)
    WEBHOOK_QUEUE_DUE_JOBS.set(got.webhooks_due)
    WEBHOOK_QUEUE_LAG.set(got.webhooks_lag_s)
    DEAD_LETTER_STREAM.set(got.intake_dead)
    WEBHOOK_DEAD_LETTER_STREAM.set(got.webhook_dead)
    WORKERS_ALIVE.set(got.workers_alive)
    WORKERS_ACCEPTING.set(got.workers_accepting)
    WORKER_SATURATION.set(got.saturation)
    ACCOUNTS_THROTTLED.set(got.accounts_throttled)
    ACCOUNT_LONGEST_THROTTLE.set(got.longest_throttle_s)
    ACCOUNTS_TOKEN_REJECTED.set(got.tokens_rejected)
    # An account that leaves the first TOKEN_EXPIRY_SERIES loses its series (removed, not
    # cleared: a scrape in between must not see none).
    for account in _expiry_exported - got.token_expiry.keys():
        with contextlib.suppress(KeyError):
            TOKEN_EXPIRES_IN.remove(account)
    for account, left in got.token_expiry.items():
        TOKEN_EXPIRES_IN.labels(account=account).set(round(left, 3))
    _expiry_exported.clear()
    _expiry_exported.update(got.token_expiry)
    TOKEN_EXPIRES_IN_MIN.set(
        got.token_expiry_min_s if got.token_expiry_min_s is not None else float("inf")
    )
    ACCOUNTS_TOKEN_REFRESH_FAILING.set(got.token_refresh_failing)
    await note_inflight(redis, keys, now=now, inflight=got.inflight)
    return got


def _lag(now_ms: int, oldest: list[tuple[bytes, float]]) -> float:
    """Seconds since the oldest due job (ZRANGEBYSCORE's first, with its score) became due."""
    return max(0.0, (now_ms - float(oldest[0][1])) / 1000) if oldest else 0.0


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer | None:
    """Serve /metrics on ``port`` in a thread; a busy port is logged, never fatal.

    Metrics are for watching the poller, not part of its job: a second worker on the same host
    with the same port keeps polling, it only goes unscraped (and says so in the log).
    """
    try:
        server, thread = start_http_server(port, addr, registry=registry)
    except OSError as exc:
        log.error(  # noqa: TRY400 - one line; the traceback says nothing more
            "metrics: cannot listen on %s:%d (%s); metrics disabled in this process",
            addr,
            port,
            exc,
        )
        return None
    bound = int(server.server_address[1])
    log.info("metrics: serving /metrics on %s:%d", addr, bound)
    return MetricsServer(server, thread, bound)


async def stop_server(server: MetricsServer | None) -> None:
    if server is not None:
        with contextlib.suppress(Exception):
            # shutdown() waits for the serving thread's poll loop: not on the event loop.
            await asyncio.to_thread(server.close)
