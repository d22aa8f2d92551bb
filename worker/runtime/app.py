"""Wiring: settings -> one worker process (the runner, its job functions, its background loops).

``threads-poller worker`` runs ``build_worker(load_settings()).run_forever()``. The process runs
two job runners (``worker.runtime.runner``), each with a queue, a claim and job slots of its own:
the checks' (``concurrency``) and the webhook deliveries' (``WEBHOOK_CONCURRENCY``), so that
deliveries hanging on a receiver never hold a check's slot. Beside them run the intake consumer,
the reconciler, the quota refresh, the heartbeat and the per-minute stats, all started and
stopped together. SIGTERM stops the claiming, lets running jobs finish within a grace, and gives
the rest back to their queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from redis.asyncio import Redis

from api_client.client import make_session
from config import Settings
from worker.core.targets import WebhookPolicy, webhook_policy
from worker.jobs.check import CheckJob, policy_of
from worker.jobs.context import PollerContext
from worker.jobs.quota import clients_for, refresh_quotas_forever, token_source
from worker.jobs.token_refresh import TokenKeeper
from worker.jobs.tokens import AccountTokenSource, TokenSource
from worker.jobs.webhook import WebhookJob, make_webhook_session
from worker.ops import metrics, stats
from worker.ops.health import Heartbeat
from worker.runtime.intake import IntakeConsumer
from worker.runtime.reconcile import reconcile_forever
from worker.runtime.runner import JobSpec, Runner
from worker.store.accounts import AccountStore
from worker.store.connections import StartupAborted, connect_worker_redis
from worker.store.jobdata import CHECK_FUNCTION, DELIVER_FUNCTION
from worker.store.queue import JobQueue
from worker.store.replicas import Replicas
from worker.store.results import ResultStore
from worker.store.targets import Resolve

log = logging.getLogger("threads_poller.worker")

# Runs of one check job beyond this end its poll (TIMED_OUT, saying why): a backstop for a job
# that keeps failing, far above what a poll uses (its checks, deferrals and publish steps).
MAX_RUNS_PER_POLL = 500

# How long a stop waits on Redis for a claim still in flight, and then again for leaving the
# intake group and removing the heartbeat. A Redis that is there answers in milliseconds; with
# Redis away each command would wait out the client's retries (6 connects of up to 5 s), and the
# orchestrator's SIGKILL would end the process before it exits by itself.
STOP_REDIS_SECONDS = 3.0


def result_store(redis: Redis, settings: Settings) -> ResultStore:
    return ResultStore.from_settings(redis, settings)


def concurrency(settings: Settings) -> int:
    """Checks one process runs at once: a claim takes no more than it can run (and call the API
    for) at once, so due jobs spread over the replicas instead of waiting in one."""
    return min(settings.worker_max_jobs, settings.api_max_concurrency)


def webhook_concurrency(settings: Settings) -> int:
    """Webhook deliveries one process runs at once: a budget of their own, so that receivers
    that hang hold these slots and never a check's."""
    return settings.webhook_concurrency


def lease_seconds(settings: Settings) -> float:
    """How long a claim or renewal keeps a job (renewed while its run works): a killed run's
    job is due again at most this long after the kill."""
    return settings.lease_seconds


def webhook_timeout(settings: Settings) -> float:
    return settings.webhook_timeout_seconds + 2


def poll_delay(settings: Settings) -> float:
    # Well under the interval so short test intervals keep their spacing; 0.2 s at most for
    # sub-second lateness. The runner also wakes for the next due job and for a freed slot.
    return max(0.01, min(0.2, settings.poll_interval_seconds / 10))


def claim_gap(settings: Settings) -> float:
    """The runner's shortest sleep between claims when nothing more is due (half a poll period,
    0.1 s with the defaults): checks that fall due one by one, as a paced account's do, run a
    few together, up to this late, rather than one claim and one cold run each (issue 22: a
    paced burst cost 2.5 x the worker CPU per container of an unpaced one)."""
    return poll_delay(settings) / 2


def build_poller(
    settings: Settings,
    redis: Redis,
    tokens: TokenSource,
    session: aiohttp.ClientSession,
    webhook_session: aiohttp.ClientSession,
    policy: WebhookPolicy,
) -> PollerContext:
    """What every job run needs, from the settings (once per process)."""
    store = result_store(redis, settings)
    return PollerContext(
        settings=settings,
        store=store,
        queue=JobQueue(redis, store.keys, job_ttl_seconds=settings.result_ttl_seconds),
        deliveries=JobQueue(
            redis, store.keys, job_ttl_seconds=settings.result_ttl_seconds, deliveries=True
        ),
        accounts=AccountStore(redis, store.keys),
        clients=clients_for(settings, session),
        tokens=tokens,
        policy=policy_of(settings),
        webhook_session=webhook_session,
        webhook_policy=policy,
        replicas=Replicas(redis, store.keys, fixed=settings.publish_wait_replicas),
    )


async def republish(poller: PollerContext) -> None:
    """What the workers keep in ``{prefix}:config`` (every reconcile period, and at start): their
    pacing and signing for producers, and the replicas seen, so that a publish during a
    partition still waits for the replica it cannot reach (worker.store.replicas)."""
    await poller.store.publish_config(webhook_signing=poller.settings.webhook_secret is not None)
    await poller.replicas.needed()


def job_specs(settings: Settings, poller: PollerContext) -> list[JobSpec]:
    """The job functions a worker runs, with their timeouts and retry rules: the check's, then
    the delivery's (each runs in a runner of its own: ``runners``)."""
    check = CheckJob(poller)
    return [
        JobSpec(
            CHECK_FUNCTION,
            check,
            timeout_s=settings.job_timeout_seconds,
            # The call of a failed run may have gone out: keep Meta's spacing.
            retry_delay_s=settings.poll_interval_seconds,
            max_tries=MAX_RUNS_PER_POLL,
            give_up=check.give_up,
        ),
        JobSpec(
            DELIVER_FUNCTION,
            WebhookJob(poller),
            timeout_s=webhook_timeout(settings),
            retry_delay_s=settings.webhook_retry_delay(1),
        ),
    ]


def runners(settings: Settings, poller: PollerContext) -> tuple[Runner, Runner]:
    """The checks' runner and the deliveries': a queue, a claim and job slots each. They share
    the process's name (its runs' tokens and its heartbeat say which worker ran a job)."""
    specs = job_specs(settings, poller)
    checks = Runner(
        poller.queue,
        [spec for spec in specs if spec.name != DELIVER_FUNCTION],
        concurrency=concurrency(settings),
        poll_delay_s=poll_delay(settings),
        lease_s=lease_seconds(settings),
        claim_gap_s=claim_gap(settings),
    )
    deliveries = Runner(
        poller.deliveries,
        [spec for spec in specs if spec.name == DELIVER_FUNCTION],
        concurrency=webhook_concurrency(settings),
        poll_delay_s=poll_delay(settings),
        name=checks.name,
        lease_s=lease_seconds(settings),
        claim_gap_s=claim_gap(settings),
    )
    return checks, deliveries


def job_counts(checks: Runner, deliveries: Runner) -> dict[str, int]:
    """What the heartbeat says about the runs: counters of both runners summed; ``ongoing`` and
    ``slots`` are the checks' (saturation that delays checks), ``webhook_ongoing`` and
    ``webhook_slots`` the deliveries'."""
    counts = checks.stats.as_dict()
    for name, n in deliveries.stats.as_dict().items():
        counts[name] = counts.get(name, 0) + n
    counts.update(
        ongoing=checks.running,
        slots=checks.concurrency,
        webhook_ongoing=deliveries.running,
        webhook_slots=deliveries.concurrency,
    )
    return counts


# The cyclic collector's youngest generation runs after this many more tracked objects were
# made than freed (CPython's default is 700). See ``tune_gc``.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """A worker process's garbage collector, tuned for many short checks at once.

    Measured in the bench's throughput run (issue 22, closer to the floor): with CPython's
    defaults the collector took ~6 % of the worker's CPU (~0.04 ms a check), a third of it in
    young collections (a claim of 200 jobs makes more than 700 objects at once, so each claim
    set one off, scanning every running check's objects) and two thirds in 11 full collections
    scanning everything the process loaded at start. Now: the objects of the start (modules,
    settings, clients) are frozen out of every collection (``gc.freeze``), and the young
    generation runs after 10,000 objects; the same run then made 1 collection instead of 1,574.
    Checks free their objects by reference counting (almost nothing of theirs is cyclic), so
    what waits for the collector is small: at most those 10,000 objects."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@dataclass
class PollerWorker:
    settings: Settings
    tokens: TokenSource | None = None
    redis: Redis | None = None
    # What the deliveries' guarded resolver asks (None: the system's getaddrinfo; tests give
    # one that answers what they need), and the intake's enqueue check likewise.
    webhook_resolver: AbstractResolver | None = None
    webhook_resolve: Resolve | None = None
    runner: Runner | None = field(default=None, init=False)
    # The webhook deliveries' runner (their own queue and slots), beside the checks' ``runner``.
    webhook_runner: Runner | None = field(default=None, init=False)
    # The loops running beside the runner, and the /metrics server (None when off).
    background: list[asyncio.Task[Any]] = field(default_factory=list, init=False)
    metrics_server: metrics.MetricsServer | None = field(default=None, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _alive: bool = field(default=False, init=False)

    @property
    def alive(self) -> bool:
        """True while the runner claims jobs (between start-up and a stop)."""
        return self._alive

    def stop(self) -> None:
        """Stop taking jobs (what SIGTERM does); ``run`` then drains and returns."""
        self._stopping.set()
        for runner in (self.runner, self.webhook_runner):
            if runner is not None:
                runner.stop()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT (the CLI's ``worker`` command)."""
        tune_gc()
        asyncio.run(self._main_with_signals())

    async def _main_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        await self.run()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info(
            "shutdown on %s: no new checks; waiting for running ones",
            sig.name,
            extra={"running": self.runner.running if self.runner else 0},
        )
        self.stop()

    async def run(self) -> None:
        """Start, claim until ``stop``, drain; every resource acquired is released in reverse
        order on the way out, whatever ends the run (an ``AsyncExitStack``)."""
        try:
            redis = self.redis or await connect_worker_redis(self.settings, stopping=self._stopping)
        except StartupAborted:
            log.info("worker stopped before Redis answered")
            return
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._log_stopped)  # the very last line of a run
            if self.redis is None:
                stack.push_async_callback(redis.aclose)
            parts = self._wire(stack, redis)
            await self._start(stack, parts)
            await self._claim_until_stopped(parts.runner, parts.deliveries)

    def _wire(self, stack: contextlib.AsyncExitStack, redis: Redis) -> _Parts:
        """Everything a run uses, built from the settings; the HTTP sessions close at the end."""
        s = self.settings
        tokens = self.tokens or token_source(s)
        policy = webhook_policy(s, worker=True)
        own_secrets = s.secrets()
        session = make_session(
            timeout_seconds=s.http_timeout_seconds, max_connections=concurrency(s)
        )
        stack.push_async_callback(session.close)
        # A connection for each delivery slot: a delivery never waits for another's.
        hooks = make_webhook_session(
            policy, max_connections=webhook_concurrency(s), resolver=self.webhook_resolver
        )
        stack.push_async_callback(hooks.close)
        poller = build_poller(s, redis, tokens, session, hooks, policy)
        runner, deliveries = runners(s, poller)
        self.runner, self.webhook_runner = runner, deliveries
        # One consumer per producer's stream (the default one, then each named producer's),
        # each applying that producer's scope.
        producers = s.producer_scopes()
        intakes = [
            IntakeConsumer(
                redis,
                poller.store,
                consumer=runner.name,
                batch_size=s.intake_batch_size,
                claim_idle_seconds=s.intake_claim_idle_seconds,
                max_entry_bytes=s.intake_max_entry_bytes,
                webhook_policy=policy,
                webhook_resolve=self.webhook_resolve,
                secrets=lambda: [*tokens.known_secrets(), *own_secrets],
                scope=scope,
            )
            for scope in [producers.default, *producers.named]
        ]
        heartbeat = Heartbeat(
            redis,
            poller.store.keys,
            runner.name,
            probe=lambda: (runner.accepting, job_counts(runner, deliveries)),
        )
        stack.push_async_callback(_leave, intakes, heartbeat)
        return _Parts(redis, tokens, session, poller, runner, deliveries, intakes, heartbeat)

    async def _start(self, stack: contextlib.AsyncExitStack, parts: _Parts) -> None:
        """The config for producers, a first beat, the background loops (cancelled at the end),
        the gauges and the /metrics server."""
        s, poller, runner, deliveries = self.settings, parts.poller, parts.runner, parts.deliveries
        for warning in s.warnings():
            log.warning(warning)
        await republish(poller)
        await parts.heartbeat.beat()
        stack.push_async_callback(self._cancel_background)
        stack.callback(deliveries.stop)
        stack.callback(runner.stop)
        for name, loop in self._loops(parts):
            self.background.append(asyncio.create_task(loop, name=name))
        metrics.track_jobs(lambda: runner.running, runner.concurrency)
        metrics.track_deliveries(lambda: deliveries.running, deliveries.concurrency)
        if s.metrics_port > 0:
            # This process's own metrics; the deployment's (Redis) gauges: `serve`.
            self.metrics_server = metrics.start_server(s.metrics_port, s.metrics_host)
            stack.push_async_callback(metrics.stop_server, self.metrics_server)
        log.info(
            "worker started",
            extra={
                "worker": runner.name,
                "api_base_url": s.threads_api_base_url,
                "interval_s": s.poll_interval_seconds,
                "window_s": s.poll_max_seconds,
                "concurrency": runner.concurrency,
                "lease_s": runner.lease_s,
                "queue": poller.store.keys.queue,
                "webhook_concurrency": deliveries.concurrency,
                "webhook_queue": poller.store.keys.webhook_queue,
            },
        )

    def _loops(self, parts: _Parts) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The loops beside the runners, by task name (each on ``worker.ops.loops.every``)."""
        s, poller, redis, tokens = self.settings, parts.poller, parts.redis, parts.tokens
        loops: list[tuple[str, Coroutine[Any, Any, None]]] = [("heartbeat", parts.heartbeat.run())]
        loops += [(f"intake:{intake.scope.name}", intake.run()) for intake in parts.intakes]
        reconcile = reconcile_forever(
            poller.store,
            period_seconds=min(60.0, max(1.0, s.poll_interval_seconds)),
            grace_seconds=s.job_timeout_seconds + s.poll_interval_seconds + 30.0,
            republish=lambda: republish(poller),
        )
        loops.append(("reconcile", reconcile))
        quota = refresh_quotas_forever(redis, poller.accounts, poller.clients, tokens, s)
        loops.append(("quota", quota))
        if isinstance(tokens, AccountTokenSource) and s.threads_tokens_file is not None:
            keeper = TokenKeeper(poller.accounts, tokens, parts.session, s, owner=parts.runner.name)
            loops.append(("tokens", keeper.run_forever()))
        # Per-minute counts for the console's chart (worker.ops.stats).
        loops.append(("stats", stats.flush_forever(redis, poller.store.keys)))
        return loops

    async def _claim_until_stopped(self, runner: Runner, deliveries: Runner) -> None:
        """Both runners claim until ``stop``; then running jobs get a grace to finish."""

        async def claim() -> None:
            # Both claim loops; each returns at ``stop`` (a Redis error only pauses one).
            await asyncio.gather(runner.run(), deliveries.run())

        claiming: asyncio.Future[None] | None = None
        if not self._stopping.is_set():
            self._alive = True
            claiming = asyncio.ensure_future(claim())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({claiming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                self._alive = False
        stopped_at = asyncio.get_running_loop().time()
        grace = math.ceil(self.settings.http_timeout_seconds) + 2
        await asyncio.gather(runner.drain(grace), deliveries.drain(grace))
        if claiming is not None:
            # A claim still waiting on an absent Redis (STOP_REDIS_SECONDS after the stop, the
            # drain included) is abandoned: any job Redis did hand it is due again when its
            # lease ends, as after a crash.
            waited = asyncio.get_running_loop().time() - stopped_at
            await asyncio.wait({claiming}, timeout=max(0.0, STOP_REDIS_SECONDS - waited))
            claiming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claiming

    async def _cancel_background(self) -> None:
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _log_stopped(self) -> None:
        if self.runner is not None and self.webhook_runner is not None:
            log.info("worker stopped", extra=job_counts(self.runner, self.webhook_runner))


@dataclass(frozen=True, slots=True)
class _Parts:
    """What one run of ``PollerWorker`` is made of (``PollerWorker._wire``)."""

    redis: Redis
    tokens: TokenSource
    session: aiohttp.ClientSession
    poller: PollerContext
    runner: Runner
    deliveries: Runner
    intakes: list[IntakeConsumer]
    heartbeat: Heartbeat


async def _leave(intakes: list[IntakeConsumer], heartbeat: Heartbeat) -> None:
    """At stop: leave the intake groups and remove the heartbeat, within STOP_REDIS_SECONDS."""
    try:
        async with asyncio.timeout(STOP_REDIS_SECONDS):
            for intake in intakes:
                with contextlib.suppress(Exception):
                    await intake.close()
            with contextlib.suppress(Exception):
                # At once, not after the TTL: from here on this process fails its health check.
                await heartbeat.stop()
    except TimeoutError:
        log.warning(
            "Redis did not answer at stop: heartbeat and intake consumer left to expire",
            extra={"waited_s": STOP_REDIS_SECONDS},
        )


def build_worker(
    settings: Settings,
    *,
    tokens: TokenSource | None = None,
    redis: Redis | None = None,
    webhook_resolver: AbstractResolver | None = None,
    webhook_resolve: Resolve | None = None,
) -> PollerWorker:
    return PollerWorker(
        settings,
        tokens=tokens,
        redis=redis,
        webhook_resolver=webhook_resolver,
        webhook_resolve=webhook_resolve,
    )
