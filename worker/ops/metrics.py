"""Prometheus metrics of one worker process, served on ``METRICS_PORT`` (0: off).

Two sorts:

- events this process saw (counters, histograms): checks by outcome, API latency, throttling,
  final states, intake acceptances and dead letters. Sum them over workers.
- the shared Redis state (gauges, sampled every ``SAMPLE_SECONDS`` by each worker): containers in
  flight, queue depth, how late the oldest due check is, the dead-letter stream's length. Every
  worker reports the same values: take ``max`` over workers, not ``sum``.

Label values are bounded: API statuses outside the documented set are counted as ``OTHER`` (the
result hash keeps the verbatim value), so an API change cannot explode the series count.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from redis.asyncio import Redis

from api_client.errors import ThreadsError
from api_client.models import ContainerStatus
from api_client.policy import ErrorKind, classify
from worker.core.decisions import Decision
from worker.core.result import PollResult
from worker.core.states import State
from worker.store.keys import Keys

log = logging.getLogger("threads_poller.metrics")

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

SAMPLE_SECONDS = 5.0
# Where check_container notes the run's start in arq's per-job ctx (read by check_timings).
RUN_STARTED_KEY = "check_started_at"
_KNOWN_STATUSES = frozenset(s.value for s in State)

CHECKS = Counter(
    "threads_poller_checks",
    "Checks of a container's status, by the API's answer (status) or the failure (error_kind).",
    ["status", "error_kind"],
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
FINAL_STATES = Counter(
    "threads_poller_final_states",
    "Containers that reached a final state in this process, by status.",
    ["status"],
)
INTAKE_ACCEPTED = Counter(
    "threads_poller_intake_accepted", "Intake stream entries turned into polls by this process."
)
INTAKE_DEAD_LETTERS = Counter(
    "threads_poller_intake_dead_letters",
    "Intake stream entries this process moved to the dead-letter stream.",
)
IN_FLIGHT = Gauge(
    "threads_poller_containers_in_flight",
    "Containers being polled (ZCARD of {prefix}:inflight). Same value on every worker.",
)
QUEUE_JOBS = Gauge(
    "threads_poller_queue_jobs",
    "arq jobs in the queue, due or scheduled (ZCARD of {prefix}:queue). Same on every worker.",
)
QUEUE_DUE_JOBS = Gauge(
    "threads_poller_queue_due_jobs",
    "arq jobs whose due time has passed (waiting for a worker, or running now).",
)
QUEUE_LAG = Gauge(
    "threads_poller_queue_lag_seconds",
    "Seconds since the oldest due job became due; 0 when nothing is due.",
)
DEAD_LETTER_STREAM = Gauge(
    "threads_poller_intake_dead_letter_stream_length",
    "Entries in the dead-letter stream {prefix}:intake:dead (XLEN). Same on every worker.",
)
SAMPLE_FAILURES = Counter(
    "threads_poller_redis_sample_failures",
    "Rounds in which the Redis gauges could not be sampled (they keep their last value).",
)


def status_label(status: str | None) -> str:
    if not status:
        return ""
    return status if status in _KNOWN_STATUSES else "OTHER"


def observe_api_call(outcome: ContainerStatus | ThreadsError, seconds: float) -> None:
    """One Graph API status call: its latency and, for a throttling answer, a throttle event."""
    if isinstance(outcome, ThreadsError):
        API_REQUEST_SECONDS.labels(outcome="error").observe(seconds)
        if classify(outcome) == ErrorKind.THROTTLED:
            API_THROTTLED.inc()
    else:
        API_REQUEST_SECONDS.labels(outcome="ok").observe(seconds)


@functools.cache
def _checks(status: str, error_kind: str) -> Any:
    # labels() takes a lock and builds a key on every call; label values are bounded (see the
    # module docstring), so caching each child is bounded too.
    return CHECKS.labels(status=status, error_kind=error_kind)


@functools.cache
def _final_states(status: str) -> Any:
    return FINAL_STATES.labels(status=status)


def observe_check(
    decision: Decision, *, checked: bool, written: bool, lag_s: float | None = None
) -> None:
    """One check run: ``checked`` when it asked the API, ``written`` when its outcome was stored."""
    if checked:
        if decision.error is not None:
            kind = decision.error.kind
            _checks("", str(kind)).inc()
        else:
            _checks(status_label(decision.last_api_status), "").inc()
        if lag_s is not None:
            CHECK_LAG.observe(max(0.0, lag_s))
    if written and decision.final:
        _final_states(status_label(decision.status)).inc()


def observe_intake(*, accepted: int, dead_lettered: int) -> None:
    if accepted:
        INTAKE_ACCEPTED.inc(accepted)
    if dead_lettered:
        INTAKE_DEAD_LETTERS.inc(dead_lettered)


async def sample(redis: Redis, keys: Keys, now: float | None = None) -> None:
    """Read the shared state into the gauges (two round trips; "due" by Redis' clock)."""
    if now is None:
        seconds, micros = await redis.time()
        now = float(seconds) + micros / 1e6
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.inflight)
        pipe.zcard(keys.queue)
        # arq scores jobs by due time in ms: everything up to now is due.
        pipe.zcount(keys.queue, "-inf", now_ms)
        pipe.zrangebyscore(keys.queue, "-inf", now_ms, start=0, num=1, withscores=True)
        pipe.xlen(keys.dead_letters)
        inflight, queued, due, oldest, dead = await pipe.execute()
    IN_FLIGHT.set(inflight)
    QUEUE_JOBS.set(queued)
    QUEUE_DUE_JOBS.set(due)
    QUEUE_LAG.set(max(0.0, (now_ms - float(oldest[0][1])) / 1000) if oldest else 0.0)
    DEAD_LETTER_STREAM.set(dead)


async def sample_forever(redis: Redis, keys: Keys, period: float = SAMPLE_SECONDS) -> None:
    while True:
        try:
            await sample(redis, keys)
        except asyncio.CancelledError:
            raise
        except Exception:
            SAMPLE_FAILURES.inc()
            log.warning("metrics: Redis gauges not sampled", exc_info=True)
        await asyncio.sleep(period)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_server(port: int, addr: str = "0.0.0.0") -> MetricsServer | None:
    """Serve /metrics on ``port`` in a thread; a busy port is logged, never fatal.

    Metrics are for watching the poller, not part of its job: a second worker on the same host
    with the same port keeps polling, it only goes unscraped (and says so in the log).
    """
    try:
        server, thread = start_http_server(port, addr)
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


def check_timings(ctx: dict[str, Any], current: PollResult, now: float) -> dict[str, float]:
    """``run_ms`` (this run so far) and ``lag_s`` (how late it started) for the check log line.

    ``ctx`` is arq's per-job dict, where ``check_container`` notes when the run started.
    """
    started = ctx.get(RUN_STARTED_KEY)
    if not isinstance(started, float):
        return {}
    timings = {"run_ms": round((now - started) * 1000, 1)}
    due = current.next_check_at or current.enqueued_at
    if due is not None:
        timings["lag_s"] = round(started - due, 3)
    return timings
