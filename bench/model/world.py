"""The lifecycle model's world: one example's deployment (``World``: the clients, the
runners, the Graph API and webhook receiver models, on a Redis pair), the model's settings, and
``drain``, which lets time pass at the end of an example until every poll is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from bench.model.graph import GraphModel, Receiver
from bench.model.topology import Topology
from config import Settings, load_settings
from worker.core.targets import webhook_policy
from worker.jobs.context import PollerContext
from worker.jobs.quota import token_source
from worker.jobs.webhook import make_webhook_session
from worker.runtime.app import build_poller, job_specs
from worker.runtime.intake import IntakeConsumer
from worker.runtime.runner import Runner
from worker.store.admin import AdminStore
from worker.store.connections import open_redis
from worker.store.jobdata import DELIVER_FUNCTION
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob

TOKEN = "EAAmodelTOKEN0123456789abcdefabcdef"  # noqa: S105 - the model's own token
SECRET = "model-webhook-secret-0123456789abcdef"  # noqa: S105
SINGLES = ("101", "102", "103")
PARENTS = ("201", "202")
INTERVAL, WINDOW, LONG_WINDOW, MAX_DELAY = 0.3, 1.2, 2.4, 0.8
# Leases outlive an example, and are renewed only by the steps that say so (``renewing=False``):
# when a lease runs out is the machine's choice, never the wall clock's.
LEASE_MS = 60_000
# How long ``drain`` may take to bring every poll to a final state (real seconds): the longest
# window, the throttling it may absorb, a carousel's wait for its children, and slack.
DRAIN_SECONDS = 20.0


def model_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "redis_url": redis_url,
        "threads_api_base_url": "http://127.0.0.1:9",  # never called: GraphModel answers
        "threads_access_token": TOKEN,
        "poll_interval_seconds": INTERVAL,
        "poll_max_seconds": WINDOW,
        "job_timeout_seconds": 30.0,
        "account_max_requests_per_second": 0,
        "throttle_backoff_seconds": 0.1,
        "throttle_backoff_max_seconds": 0.4,
        "throttle_max_delay_seconds": MAX_DELAY,
        "publish_grace_seconds": 0.05,
        "publish_min_age_seconds": 0,
        "publish_reply_settle_seconds": 0.05,
        "publish_wait_timeout_seconds": 0.2,
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": "127.0.0.1",
        "webhook_retry_schedule": "0.05,0.05",
        "metrics_port": 0,
        "log_level": "error",
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Run:
    """One run of a job in the model: its task, and what happened to it."""

    n: int
    job: ClaimedJob
    task: asyncio.Task[None]
    stalled: bool = False  # its lease ran out while it waited (it may come back)
    killed: bool = False  # its worker died: it never comes back


@dataclass
class Stats:
    """What a long run covered."""

    examples: int = 0
    steps: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    finals: Counter[str] = field(default_factory=Counter)
    publish_calls: int = 0
    lost_replies: int = 0
    failovers: int = 0
    restarts: int = 0
    interleavings: set[tuple[str, ...]] = field(default_factory=set)
    # The example (counted from 1) in which a promise first broke, before any shrinking.
    first_failure: int | None = None
    first_failure_message: str = ""
    first_failure_trace: list[str] = field(default_factory=list)

    def failed(self, exc: AssertionError) -> None:
        if self.first_failure is None:
            self.first_failure = self.examples
            self.first_failure_message = str(exc).splitlines()[0] if str(exc) else repr(exc)


class World:
    """One example's deployment: clients, the runner, the models; on the machine's own loop."""

    def __init__(self, topology: Topology, loop: asyncio.AbstractEventLoop) -> None:
        self.topology = topology
        self.loop = loop
        self.settings = model_settings(topology.url)
        self.keys = Keys(self.settings.key_prefix)
        self.redis: Redis = open_redis(self.settings, worker=True)
        self.graph = GraphModel(self.read_hash)
        self.receiver = Receiver()
        self.runs: list[Run] = []
        self.worker_n = 0
        self.hooks: dict[tuple[str, str], int] = {}  # (cid, generation) -> receiver path n
        self.hook_n = 0
        self.finals_seen: dict[tuple[str, str], str] = {}
        self.carousels: dict[str, tuple[str, ...]] = {}

    async def start(self) -> None:
        await self.receiver.start()
        s = self.settings
        policy = webhook_policy(s, worker=True)
        self.hooks_session = make_webhook_session(policy)
        poller = build_poller(
            s, self.redis, token_source(s), self.hooks_session, self.hooks_session, policy
        )
        self.poller: PollerContext = dataclasses.replace(poller, clients={"threads": self.graph})  # type: ignore[dict-item]
        self.store = self.poller.store
        self.admin = AdminStore(self.store)
        self.intake = IntakeConsumer(
            self.redis,
            self.store,
            consumer="model-intake",
            batch_size=10,
            claim_idle_seconds=1.0,
            max_entry_bytes=s.intake_max_entry_bytes,
            webhook_policy=policy,
        )
        await self.intake.ensure_group()
        # A deployment that has run a while has been seen with its replica (the replica
        # memory: worker/store/replicas.py).
        await self.poller.replicas.needed()
        self.new_worker()

    def new_worker(self) -> None:
        """A worker's two runners: the checks' and the webhook deliveries' (each claims its own
        queue, as worker.runtime.app's do)."""
        self.worker_n += 1
        specs = job_specs(self.settings, self.poller)
        name = f"model-worker-{self.worker_n}"
        self.runner = Runner(
            self.poller.queue,
            [spec for spec in specs if spec.name != DELIVER_FUNCTION],
            concurrency=1000,
            poll_delay_s=0.05,
            name=name,
            lease_s=LEASE_MS / 1000,
            renewing=False,
        )
        self.hook_runner = Runner(
            self.poller.deliveries,
            [spec for spec in specs if spec.name == DELIVER_FUNCTION],
            concurrency=1000,
            poll_delay_s=0.05,
            name=name,
            lease_s=LEASE_MS / 1000,
            renewing=False,
        )

    def queue_of(self, job_id: str) -> str:
        """The queue a job of ours lives in (record.lua puts deliveries in their own)."""
        hook = job_id.startswith(self.keys.webhook_job_prefix)
        return self.keys.webhook_queue if hook else self.keys.queue

    async def read_hash(self, cid: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.result(cid))  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def close(self) -> None:
        for run in self.runs:
            run.task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(r.task for r in self.runs), return_exceptions=True), 5
            )
        await self.receiver.stop()
        await self.hooks_session.close()
        await self.redis.aclose()

    # ----- runs ---------------------------------------------------------------------------

    def live_runs(self) -> list[Run]:
        return [r for r in self.runs if not r.task.done() and not r.killed]

    async def settle(self, tasks: list[asyncio.Task[None]], within: float = 5.0) -> None:
        """Let ``tasks`` go on until each is done or waits on the Graph API."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            waiting = {c.run for c in self.graph.pending}
            if all(t.done() or self._run_of(t) in waiting for t in tasks):
                return
            self.graph.parked.clear()
            parked = asyncio.ensure_future(self.graph.parked.wait())
            try:
                await asyncio.wait(
                    [*[t for t in tasks if not t.done()], parked],
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                parked.cancel()
        raise AssertionError("a run neither finished nor reached the Graph API within 5 s")

    def _run_of(self, task: asyncio.Task[None]) -> int:
        return next(r.n for r in self.runs if r.task is task)

    async def claim_and_run(self, pick: int) -> bool:
        """Make one queued job due (time passes for it) and run what the claim hands out."""
        ids = await queued(self)
        if not ids:
            return False
        job_id = ids[pick % len(ids)].decode()
        queue = self.queue_of(job_id)
        if not await self.redis.exists(self.keys.job_lock(job_id)):
            await self.redis.zadd(queue, {job_id: 0}, xx=True)
        hook = queue == self.keys.webhook_queue
        runner = self.hook_runner if hook else self.runner
        claim = await runner.queue.claim(runner.name, limit=1, lease_ms=LEASE_MS)
        tasks = []
        for job in claim.jobs:
            n = len(self.runs)
            self.graph.current_run = n
            task = asyncio.ensure_future(runner.execute(job))
            self.runs.append(Run(n, job, task))
            tasks.append(task)
            # The run's first steps happen before the next one is started.
            await asyncio.sleep(0)
        await self.settle(tasks)
        return bool(tasks)

    async def expire_lease(self, run: Run) -> None:
        """The run's lease runs out (it stalled, or its worker died): its job is due again."""
        key = self.keys.job_lock(run.job.job_id)
        if await self.redis.get(key) == run.job.token.encode():
            await self.redis.delete(key)
            await self.redis.zadd(self.queue_of(run.job.job_id), {run.job.job_id: 0}, xx=True)

    def run_of_call(self, n: int) -> Run:
        return self.runs[n]


async def final_hashes(world: World) -> list[dict[str, str]]:
    out = []
    async for key in world.redis.scan_iter(match=world.keys.result("*"), count=1000):
        raw = await world.redis.hgetall(key)  # type: ignore[misc]
        out.append({k.decode(): v.decode() for k, v in raw.items()})
    return out


async def drain(world: World) -> None:
    """Let time pass: heal Redis, answer every waiting call plainly, run every job, until
    every poll is final and no job is left (or DRAIN_SECONDS pass)."""
    topo = world.topology
    topo.proxy.lose_reply(None)
    topo.heal()
    world.receiver.ok = True
    g = world.graph
    for cid in [*SINGLES, *PARENTS]:
        if g.status_of(cid) == "IN_PROGRESS":
            g.statuses[cid] = "FINISHED"
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        for call in list(g.pending):
            run = world.runs[call.run]
            g.pending.remove(call)
            if call.kind == "status":
                g.answer_status(call, "status")
            else:
                g.answer_publish(call, "posted", owner=not (run.stalled or run.killed))
        waiting = [r.task for r in world.runs if not r.task.done() and not r.killed]
        if waiting:
            await world.settle(waiting)
            continue
        due = await _scored(world)
        if not due:
            hashes = await final_hashes(world)
            if all(h.get("final") == "1" for h in hashes):
                return
            # A live poll without a job (lost with a failover): the reconciler's repair.
            from worker.runtime.reconcile import reconcile_once

            await reconcile_once(world.store, now=time.time() + 3600, grace_seconds=0)
            continue
        await _leases_run_out(world)
        now_ms = int(await _redis_now(world) * 1000)
        ran = False
        for job_id, score in due:
            if score <= now_ms + 1500:
                ran = await world.claim_and_run([j for j, _ in due].index(job_id)) or ran
                break
        if not ran:
            await asyncio.sleep(0.05)
    live = [h["container_id"] for h in await final_hashes(world) if h.get("final") != "1"]
    raise AssertionError(f"not final after {DRAIN_SECONDS:g}s of draining: {live}")


async def _leases_run_out(world: World) -> None:
    """Time passes for leases held by no run that is still going (a claim whose reply was
    lost, a run that vanished): their jobs are due again, as when a lease ends."""
    going = {r.job.token for r in world.runs if not r.task.done() and not r.killed}
    for raw in await queued(world):
        job_id = raw.decode()
        token = await world.redis.get(world.keys.job_lock(job_id))
        if token is not None and token.decode() not in going:
            await world.redis.delete(world.keys.job_lock(job_id))
            await world.redis.zadd(world.queue_of(job_id), {job_id: 0}, xx=True)


async def queued(world: World) -> list[bytes]:
    """Every queued job, of both queues, in the order one shared queue would hold them."""
    return [job_id for job_id, _ in await _scored(world)]


async def _scored(world: World) -> list[tuple[bytes, float]]:
    """(job id, due ms) of both queues (the checks' and the deliveries'), as ZRANGE orders one
    queue: by score, then by id; so the rules pick jobs as they did from one shared queue."""
    both = []
    for queue in (world.keys.queue, world.keys.webhook_queue):
        both += await world.redis.zrange(queue, 0, -1, withscores=True)
    return sorted(both, key=lambda pair: (pair[1], pair[0]))


async def account_field(world: World, name: str) -> str | None:
    raw = await world.redis.hget(world.keys.account("default"), name)  # type: ignore[misc]
    return raw.decode() if raw is not None else None


async def expire(run: Run) -> None:
    """The run's timeout fires (from inside the event loop, as the runner's timer would)."""
    run.job.deadline.expire()


async def _redis_now(world: World) -> float:
    seconds, micros = await world.redis.time()
    return float(seconds) + float(micros) / 1e6
