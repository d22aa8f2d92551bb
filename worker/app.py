"""Wiring: settings -> arq Worker with our job, the intake consumer and the reconciler.

``threads-poller worker`` runs ``build_worker(load_settings()).run()``: a ``PollerWorker``
(``worker.arq_worker``), arq's Worker with a one-round-trip job claim. arq's own CLI
(``arq worker.arq_settings.WorkerSettings``) also works, but runs stock arq's claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from typing import Any

from arq import Worker
from arq.worker import func

from api_client.client import make_session
from config import Settings, load_settings
from worker import metrics
from worker.accounts import AccountStore
from worker.arq_worker import PollerWorker
from worker.connections import redis_settings
from worker.decisions import Schedule
from worker.health import Heartbeat, arq_probe
from worker.intake import IntakeConsumer
from worker.jobs import PollerContext, check_container
from worker.keys import Keys
from worker.producer import store_for
from worker.quota import client_for, refresh_quotas_forever, token_source
from worker.reconcile import reconcile_forever
from worker.store import CHECK_FUNCTION, DELIVER_FUNCTION
from worker.tokens import TokenSource
from worker.webhooks import deliver_webhook

log = logging.getLogger("threads_poller.worker")

# Our own Redis state counts checks; arq's try limit is only a backstop (when it fires none of
# our code runs), so it sits far above anything a poll can use.
MAX_TRIES = 10_000


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    tokens: TokenSource = ctx.get("tokens") or token_source(settings)
    session = make_session(
        timeout_seconds=settings.http_timeout_seconds,
        max_connections=settings.worker_max_jobs,
    )
    store = store_for(ctx["redis"], settings)
    accounts = AccountStore(ctx["redis"], store.keys)
    schedule = Schedule(settings.poll_interval_seconds, settings.poll_max_seconds)
    client = client_for(settings, session)
    ctx["session"] = session
    ctx["poller"] = PollerContext(
        settings=settings,
        store=store,
        accounts=accounts,
        client=client,
        tokens=tokens,
        schedule=schedule,
        # Caps this process's simultaneous API requests, whatever arq's max_jobs.
        api_slots=asyncio.Semaphore(settings.api_max_concurrency),
        client_session=session,
    )
    intake = IntakeConsumer(
        ctx["redis"],
        store,
        consumer=consumer_name(),
        batch_size=settings.intake_batch_size,
        claim_idle_seconds=settings.intake_claim_idle_seconds,
        max_entry_bytes=settings.intake_max_entry_bytes,
    )
    ctx["intake"] = intake
    grace = settings.job_timeout_seconds + schedule.interval + 30.0
    ctx["background"] = [
        asyncio.create_task(intake.run(), name="intake"),
        asyncio.create_task(
            reconcile_forever(
                store,
                period_seconds=min(60.0, max(1.0, schedule.interval)),
                grace_seconds=grace,
            ),
            name="reconcile",
        ),
        asyncio.create_task(
            refresh_quotas_forever(ctx["redis"], accounts, client, tokens, settings),
            name="quota",
        ),
    ]
    # Per-process liveness for `threads-poller health`; the first beat is written before the
    # worker takes a job, so a health check passes as soon as the worker can work.
    heartbeat = Heartbeat(
        ctx["redis"], store.keys, intake.consumer, probe=arq_probe(ctx.get("worker"))
    )
    await heartbeat.beat()
    ctx["heartbeat"] = heartbeat
    ctx["background"].append(asyncio.create_task(heartbeat.run(), name="heartbeat"))
    if settings.metrics_port > 0:
        ctx["metrics_server"] = metrics.start_server(settings.metrics_port)
        ctx["background"].append(
            asyncio.create_task(metrics.sample_forever(ctx["redis"], store.keys), name="metrics")
        )
    log.info(
        "worker started",
        extra={
            "api_base_url": settings.threads_api_base_url,
            "interval_s": settings.poll_interval_seconds,
            "window_s": settings.poll_max_seconds,
            "max_checks": schedule.max_checks,
            "max_jobs": settings.worker_max_jobs,
            "queue": store.keys.queue,
        },
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    for task in ctx.get("background", []):
        task.cancel()
    for task in ctx.get("background", []):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    session = ctx.get("session")
    if session is not None:
        await session.close()
    heartbeat = ctx.get("heartbeat")
    if heartbeat is not None:
        # At once, not after the TTL: this container's health check fails from here on.
        await heartbeat.stop()
    await metrics.stop_server(ctx.get("metrics_server"))
    worker = ctx.get("worker")
    counts = (
        {
            "jobs_complete": worker.jobs_complete,
            "jobs_retried": worker.jobs_retried,
            "jobs_failed": worker.jobs_failed,
        }
        if isinstance(worker, Worker)
        else {}
    )
    log.info("worker stopped", extra=counts)


def worker_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    keys = Keys(settings.key_prefix)
    interval = settings.poll_interval_seconds
    options: dict[str, Any] = {
        "functions": [
            func(
                check_container,
                name=CHECK_FUNCTION,
                max_tries=MAX_TRIES,
                timeout=settings.job_timeout_seconds,
                keep_result=0,
            ),
            # Attempts are counted in the result hash (WEBHOOK_MAX_ATTEMPTS), not by arq.
            func(
                deliver_webhook,
                name=DELIVER_FUNCTION,
                max_tries=MAX_TRIES,
                keep_result=0,
                # arq keeps a killed job locked for its largest function timeout + 10 s:
                # keep this one small so it does not delay re-runs of killed checks.
                timeout=settings.webhook_timeout_seconds + 2,
            ),
        ],
        "queue_name": keys.queue,
        "redis_settings": redis_settings(settings),
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout_seconds,
        "keep_result": 0,
        "max_tries": MAX_TRIES,
        # arq looks for due jobs every poll_delay; keep it well under the interval so short
        # test intervals keep their spacing, and at most 0.2 s for sub-second lateness.
        "poll_delay": max(0.01, min(0.2, interval / 10)),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "health_check_key": keys.health_check,
        "health_check_interval": 10,
        # On SIGTERM: stop taking checks, let running ones finish within this grace; whatever is
        # still running then is cancelled and re-run later by arq (nothing is lost either way).
        "job_completion_wait": math.ceil(settings.http_timeout_seconds) + 2,
    }
    options.update(overrides)
    return options


def build_worker(settings: Settings | None = None, **overrides: Any) -> PollerWorker:
    settings = settings or load_settings()
    worker = PollerWorker(**worker_options(settings, **overrides))
    # The heartbeat reports arq's job counters and notices SIGTERM's drain through this.
    worker.ctx["worker"] = worker
    return worker
