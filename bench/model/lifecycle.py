"""The lifecycle's model: a stateful property test of the real store, Lua scripts, planner, job
functions and runner, on a real redis-server pair, checked against its promises after every step.

Each step is one thing that can happen to a deployment, chosen by hypothesis:

- producers: enqueue a container (plain, ``force``, ``publish``, a reply, a webhook, its own
  longer window), a carousel (a parent and two children from the same small pool of ids, so
  carousels overlap and name containers that are polled on their own), cancel;
- workers: claim a due job and run it (``Runner.execute``: the timeout, the give-up and the
  release of the real runner) until it finishes or waits on the Graph API; the give-up (a job
  whose runs never settled); a run whose lease runs out while it waits (it stalled, SIGSTOP)
  and that is answered later; the runner's lease renewal (``Runner.renew``: live runs keep their
  jobs, a run whose lease ran out is cut off); a run whose renewals stop (its lease runs out,
  and the renewal that finally goes through cuts it off); a run whose timeout fires; a worker
  that dies (its runs vanish, their leases run out);
- the Graph API (``bench.model.graph``): every status, a transient error, throttling (code 4),
  100/33, and for a publish call: posted, an ambiguous answer that did or did not post,
  24/4279009, throttled, a certain failure; a publish answered while Redis refuses writes and
  the run's timeout fires;
- Redis (``bench.model.topology``): a reply lost after its script ran (the client runs it
  again), a restart from the AOF, a partition of the replica, a failover to a replica that
  missed the last writes, a webhook receiver that fails.

After every step the invariants (``check_invariants``) read all of Redis and the models; when
the example ends, ``drain`` lets time pass and runs every due job with plain answers until
every poll is final, then checks that each one got there, and that every webhook delivery was
delivered, or dead-lettered, with its own URL and body.

Run it with ``python -m bench.model`` (a long run that prints what it covered) or through
``tests/integration/test_lifecycle_model.py`` (a bounded run in the test command).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from redis.asyncio import Redis

from bench.faults.invariants import event_problem, final_events
from bench.model.graph import GraphModel, PublishAnswer, Receiver, StatusAnswer
from bench.model.topology import Topology
from config import Settings, load_settings
from worker.core.decisions import Schedule
from worker.core.history import MAX_BYTES as HISTORY_MAX_BYTES
from worker.core.history import checks_of_last_poll, parse_history
from worker.core.targets import webhook_policy
from worker.jobs.check import PollerContext
from worker.jobs.quota import token_source
from worker.jobs.webhook import make_webhook_session
from worker.runtime.app import MAX_RUNS_PER_POLL, build_poller, job_specs
from worker.runtime.intake import IntakeConsumer
from worker.runtime.runner import Runner
from worker.store.admin import AdminStore
from worker.store.connections import open_redis
from worker.store.jobdata import DELIVER_FUNCTION
from worker.store.keys import Keys
from worker.store.queue import ClaimedJob
from worker.store.results import EnqueueRequest
from worker.store.scripts import register

T = TypeVar("T")

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
        ids = await _queued(self)
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


async def _final_hashes(world: World) -> list[dict[str, str]]:
    out = []
    async for key in world.redis.scan_iter(match=world.keys.result("*"), count=1000):
        raw = await world.redis.hgetall(key)  # type: ignore[misc]
        out.append({k.decode(): v.decode() for k, v in raw.items()})
    return out


class LifecycleModel(RuleBasedStateMachine):
    """The state machine; ``topology`` and ``stats`` are set on the class by the runner."""

    topology: Topology
    stats: Stats

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.trace: list[str] = []
        self.topology.reset()
        self.world = World(self.topology, self.loop)
        self.run(self.world.start())
        self.stats.examples += 1

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def note(self, name: str) -> None:
        self.trace.append(name)
        self.stats.steps += 1
        self.stats.rules[name] += 1

    # ----- producers ------------------------------------------------------------------------

    @rule(
        cid=st.sampled_from(SINGLES),
        force=st.booleans(),
        publish=st.booleans(),
        webhook=st.booleans(),
        long_window=st.booleans(),
        reply=st.booleans(),
    )
    def enqueue(
        self, cid: str, force: bool, publish: bool, webhook: bool, long_window: bool, reply: bool
    ) -> None:
        self.note("enqueue")
        self.run(
            self._enqueue(
                EnqueueRequest(
                    cid,
                    force=force,
                    publish=publish,
                    webhook_url=self._hook_url() if webhook else None,
                    reply_to="900" if reply else None,
                ),
                LONG_WINDOW if long_window else None,
            )
        )

    @rule(
        parent=st.sampled_from(PARENTS),
        children=st.lists(st.sampled_from(SINGLES), min_size=2, max_size=2, unique=True),
        force=st.booleans(),
        webhook=st.booleans(),
    )
    def enqueue_carousel(
        self, parent: str, children: list[str], force: bool, webhook: bool
    ) -> None:
        self.note("enqueue_carousel")
        req = EnqueueRequest(
            parent,
            force=force,
            publish=True,
            webhook_url=self._hook_url() if webhook else None,
            children=tuple(children),
        )
        self.run(self._enqueue(req, None))

    def _hook_url(self) -> str:
        self.world.hook_n += 1
        return self.world.receiver.url(self.world.hook_n)

    async def _enqueue(self, req: EnqueueRequest, window: float | None) -> None:
        w = self.world
        (done,) = await w.store.enqueue([req], window_seconds=window)
        if done.outcome in ("enqueued", "restarted"):
            for cid in (req.container_id, *req.children):
                h = await w.read_hash(cid)
                if cid == req.container_id and req.webhook_url:
                    n = int(req.webhook_url.rsplit("/", 1)[1])
                    w.hooks[(cid, h["generation"])] = n
            if req.children:
                w.carousels[req.container_id] = req.children

    @rule(
        cid=st.sampled_from(SINGLES),
        force=st.booleans(),
        publish=st.booleans(),
        webhook=st.booleans(),
        replay=st.booleans(),
    )
    def intake(self, cid: str, force: bool, publish: bool, webhook: bool, replay: bool) -> None:
        """A producer's XADD, read by a worker's intake consumer; with ``replay`` the same
        entry is delivered again (its first consumer died before the XACK)."""
        self.note("intake+replay" if replay else "intake")
        w = self.world

        async def deliver() -> None:
            fields: dict[str, str] = {"container_id": cid}
            if force:
                fields["force"] = "1"
            if publish:
                fields["publish"] = "1"
            n = 0
            if webhook:
                url = self._hook_url()
                n = int(url.rsplit("/", 1)[1])
                fields["webhook_url"] = url
            entry_id = await w.redis.xadd(w.keys.intake, fields)  # type: ignore[arg-type]
            await w.intake.ensure_group()  # as the consumer's loop does after a failover
            await w.intake.read_once()
            if replay:
                raw = {k.encode(): v.encode() for k, v in fields.items()}
                await w.intake.process([(entry_id, raw)])
            h = await w.read_hash(cid)
            if n and h.get("intake_entry") == entry_id.decode():
                w.hooks[(cid, h["generation"])] = n

        self.run(deliver())

    def cancel(self, cid: str) -> None:
        self.note("cancel")
        self.run(self.world.admin.cancel(cid, reason="model"))

    # ----- the Graph API's containers -----------------------------------------------------

    @rule(
        cid=st.sampled_from(SINGLES + PARENTS),
        status=st.sampled_from(["IN_PROGRESS", "ERROR", "EXPIRED"]),
    )
    def container_changes(self, cid: str, status: str) -> None:
        self.note("container_changes")
        # Only while it is still processing: a FINISHED container stays FINISHED (or is posted).
        if (
            self.world.graph.status_of(cid) == "IN_PROGRESS"
            and cid not in self.world.graph.statuses
        ):
            self.world.graph.statuses[cid] = status

    # ----- workers ----------------------------------------------------------------------------

    def claim_and_run(self, pick: int, count: int = 1) -> None:
        for i in range(count):
            self.note("claim_and_run")
            if not self.run(self.world.claim_and_run(pick + i)):
                return

    # Running jobs is what a deployment does most: three rules' worth of the choices (the
    # same method under three rules; hypothesis picks among rules evenly).
    @rule(pick=st.integers(0, 50), count=st.integers(1, 4))
    def run_a(self, pick: int, count: int) -> None:
        self.claim_and_run(pick, count)

    @rule(pick=st.integers(0, 50), count=st.integers(1, 4))
    def run_b(self, pick: int, count: int) -> None:
        self.claim_and_run(pick, count)

    @rule(pick=st.integers(0, 50), count=st.integers(1, 4))
    def run_c(self, pick: int, count: int) -> None:
        self.claim_and_run(pick, count)

    FAULTS = (
        "cancel",
        "publish_answered_as_time_runs_out",
        "stall_past_lease",
        "run_times_out",
        "worker_dies",
        "renew_leases",
        "renewal_stops",
        "runs_never_settle",
        "partition_replica",
        "heal_replica",
        "failover",
        "redis_restarts",
        "receiver_answers",
        "replay_webhook",
        # A partition followed by a failover is the path that loses writes: drawn more often,
        # and as one event with work in between.
        "partition_replica",
        "failover",
        "split_brain",
        "split_brain",
    )

    def fault(self, kind: str, pick: int, cid: str, ok: bool) -> None:
        """One of the rarer events (each its own method below), drawn from one rule so that
        together they are a sixth of the steps."""
        if kind == "cancel":
            self.cancel(cid)
        elif kind == "runs_never_settle":
            self.runs_never_settle(cid)
        elif kind == "receiver_answers":
            self.receiver_answers(ok)
        elif kind in (
            "publish_answered_as_time_runs_out",
            "stall_past_lease",
            "renewal_stops",
            "run_times_out",
            "replay_webhook",
            "split_brain",
        ):
            getattr(self, kind)(pick)
        else:
            getattr(self, kind)()

    FAULT_ARGS: dict[str, Any] = {
        "kind": st.sampled_from(FAULTS),
        "pick": st.integers(0, 50),
        "cid": st.sampled_from(SINGLES + PARENTS),
        "ok": st.booleans(),
    }

    @rule(**FAULT_ARGS)
    def fault_a(self, kind: str, pick: int, cid: str, ok: bool) -> None:
        self.fault(kind, pick, cid, ok)

    @rule(**FAULT_ARGS)
    def fault_b(self, kind: str, pick: int, cid: str, ok: bool) -> None:
        self.fault(kind, pick, cid, ok)

    STATUS_ANSWERS = st.sampled_from(["status", "status", "transient", "throttled", "not_found"])
    PUBLISH_ANSWERS = st.sampled_from(
        ["posted", "ambiguous_posted", "ambiguous_not_posted", "not_ready", "throttled", "failed"]
    )

    def answer_status(self, pick: int, how: StatusAnswer) -> None:
        """A status call is answered."""
        w = self.world
        call = w.graph.take(pick, "status")
        if call is None:
            return
        self.note(f"status:{how}")
        run = w.runs[call.run]
        w.graph.answer_status(call, how)
        self.run(w.settle([run.task]))

    def answer_publish(self, pick: int, how: PublishAnswer) -> None:
        w = self.world
        call = w.graph.take(pick, "publish")
        if call is None:
            return
        self.note(f"publish:{how}")
        run = w.runs[call.run]
        owner = not (run.stalled or run.killed)
        w.graph.answer_publish(call, how, owner=owner)
        self.run(w.settle([run.task]))
        if how == "throttled" and owner and run.task.done():
            # One throttling episode: the account pauses (every poll of it waits).
            until = self.run(_account_field(w, "throttled_until"))
            if float(until or 0) <= call.sent_at:
                broken = AssertionError(
                    f"{call.container_id}: a throttled publish answer did not pause the account"
                )
                self.stats.failed(broken)
                raise broken

    def answer(self, pick: int, status_how: StatusAnswer, publish_how: PublishAnswer) -> None:
        """The Graph API answers one waiting call, whichever kind it is."""
        calls = self.world.graph.pending
        if not calls:
            return
        call = calls[pick % len(calls)]
        same_kind = [c for c in calls if c.kind == call.kind]
        if call.kind == "status":
            self.answer_status(same_kind.index(call), status_how)
        else:
            self.answer_publish(same_kind.index(call), publish_how)

    def progress(self, publish_how: PublishAnswer) -> None:
        """Time passes as usual: every waiting call gets its plain answer (the container's
        status; for a publish, ``publish_how``), then every queued job runs once."""
        self.note("progress")
        w = self.world
        for call in list(w.graph.pending):
            if call in w.graph.pending:
                n = [c for c in w.graph.pending if c.kind == call.kind].index(call)
                if call.kind == "status":
                    self.answer_status(n, "status")
                else:
                    self.answer_publish(n, publish_how)
        for job_id in self.run(_queued(w)):
            ids = self.run(_queued(w))
            if job_id in ids:
                self.claim_and_run(ids.index(job_id))

    @rule(publish_how=PUBLISH_ANSWERS)
    def progress_a(self, publish_how: PublishAnswer) -> None:
        self.progress(publish_how)

    @rule(publish_how=PUBLISH_ANSWERS)
    def progress_b(self, publish_how: PublishAnswer) -> None:
        self.progress(publish_how)

    # Answers are a quarter of the steps: the same method under four rules.
    @rule(pick=st.integers(0, 50), status_how=STATUS_ANSWERS, publish_how=PUBLISH_ANSWERS)
    def answer_a(self, pick: int, status_how: StatusAnswer, publish_how: PublishAnswer) -> None:
        self.answer(pick, status_how, publish_how)

    @rule(pick=st.integers(0, 50), status_how=STATUS_ANSWERS, publish_how=PUBLISH_ANSWERS)
    def answer_b(self, pick: int, status_how: StatusAnswer, publish_how: PublishAnswer) -> None:
        self.answer(pick, status_how, publish_how)

    @rule(pick=st.integers(0, 50), status_how=STATUS_ANSWERS, publish_how=PUBLISH_ANSWERS)
    def answer_c(self, pick: int, status_how: StatusAnswer, publish_how: PublishAnswer) -> None:
        self.answer(pick, status_how, publish_how)

    @rule(pick=st.integers(0, 50), status_how=STATUS_ANSWERS, publish_how=PUBLISH_ANSWERS)
    def answer_d(self, pick: int, status_how: StatusAnswer, publish_how: PublishAnswer) -> None:
        self.answer(pick, status_how, publish_how)

    def publish_answered_as_time_runs_out(self, pick: int) -> None:
        """A publish is answered (posted) while Redis refuses writes, and the run's timeout
        fires before the record can go through; then Redis takes writes again."""
        w = self.world
        call = w.graph.take(pick, "publish")
        if call is None:
            return
        self.note("publish:posted+timeout+oom")
        run = w.runs[call.run]
        primary = self.topology.primary_client()
        try:
            primary.config_set("maxmemory", 1)
            w.graph.answer_publish(call, "posted", owner=not (run.stalled or run.killed))
            self.run(_expire(run))
            self.run(asyncio.sleep(0.3))
        finally:
            primary.config_set("maxmemory", 0)
            primary.close()
        self.run(w.settle([run.task]))

    def stall_past_lease(self, pick: int) -> None:
        """A run waiting on the API stalls past its lease (SIGSTOP): it comes back later."""
        self.note("stall")
        w = self.world
        calls = w.graph.pending
        if not calls:
            return
        run = w.runs[calls[pick % len(calls)].run]
        run.stalled = True
        self.run(w.expire_lease(run))

    def renew_leases(self) -> None:
        """The runner renews every lease it holds (one round trip): runs that own their job keep
        it; a stalled run, whose lease ran out, learns so and stops (SIGCONT, the renewal's
        reply handled before the run's own)."""
        self.note("renew")
        w = self.world
        cut = [r.task for r in w.live_runs() if r.stalled]
        self.run(w.runner.renew())
        if cut:
            # Each ends (its call, if any, abandoned): wait for that, not for a parked call.
            self.run(asyncio.wait(cut, timeout=5.0))

    def renewal_stops(self, pick: int) -> None:
        """A run waiting on the API is no longer renewed (its worker cannot reach Redis, or is
        frozen): its lease runs out and its job is due again; the renewal that finally goes
        through finds the lock gone and cuts the run off."""
        w = self.world
        calls = [c for c in w.graph.pending if not w.runs[c.run].stalled]
        if not calls:
            self.note("renewal_stops")
            return
        run = w.runs[calls[pick % len(calls)].run]
        run.stalled = True
        self.run(w.expire_lease(run))
        self.renew_leases()
        self.note("renewal_stops")
        assert run.task.done(), "a run whose lease ran out went on after its renewal"

    def run_times_out(self, pick: int) -> None:
        self.note("timeout")
        w = self.world
        calls = w.graph.pending
        if not calls:
            return
        run = w.runs[calls[pick % len(calls)].run]
        self.run(_expire(run))
        self.run(w.settle([run.task]))

    def worker_dies(self) -> None:
        """SIGKILL: every run of the worker vanishes; their leases run out."""
        self.note("worker_dies")
        w = self.world
        for run in w.live_runs():
            run.killed = True
            for call in [c for c in w.graph.pending if c.run == run.n]:
                w.graph.pending.remove(call)
                w.graph.abandon(call)
            self.run(w.expire_lease(run))
        w.new_worker()

    def runs_never_settle(self, cid: str) -> None:
        """A poll's job has run so often without settling that its next run gives up."""
        self.note("give_up")
        w = self.world

        async def exhaust() -> None:
            h = await w.read_hash(cid)
            if h.get("final") == "0":
                job_id = w.keys.job_id(cid, h["generation"])
                await w.redis.set(w.keys.job_tries(job_id), MAX_RUNS_PER_POLL)

        self.run(exhaust())

    # ----- Redis and the network ------------------------------------------------------------

    @rule(
        script=st.sampled_from(
            ["publish_claim.lua", "publish_claim.lua", "record.lua", "claim.lua", "enqueue.lua"]
        )
    )
    def lose_next_reply(self, script: str) -> None:
        """The next call of ``script`` runs in Redis, and its reply is lost on the way back."""
        self.note(f"lose_reply:{script}")
        sha = register(self.world.redis, script).sha
        self.topology.proxy.lose_reply(sha.encode())

    def partition_replica(self) -> None:
        self.note("partition")
        self.topology.partition()

    def heal_replica(self) -> None:
        self.note("heal")
        self.topology.heal()

    def failover(self) -> None:
        """The primary dies; the replica, with what it has, takes over."""
        self.note("failover")
        self.topology.failover()
        self.stats.failovers += 1
        # What the old primary alone had is gone: finals seen there may be written again.
        self.world.finals_seen.clear()
        self.world.graph.answered_media.clear()

    def split_brain(self, pick: int) -> None:
        """The replica is cut off, workers go on against the primary (claims, publish calls,
        records the replica never sees), then the primary dies and the replica takes over."""
        self.note("split_brain")
        self.partition_replica()
        w = self.world
        for job_id in self.run(_queued(w)):
            ids = self.run(_queued(w))
            if job_id in ids:
                self.claim_and_run(ids.index(job_id))
        self.failover()

    def redis_restarts(self) -> None:
        self.note("restart")
        self.topology.restart_primary()
        self.stats.restarts += 1

    def replay_webhook(self, pick: int) -> None:
        """An operator replays a dead-lettered delivery (the same body, to the same URL)."""
        self.note("replay_webhook")
        w = self.world

        async def replay() -> None:
            from worker.store.admin import DeadLetterKind

            letters = await w.redis.xrange(w.keys.webhook_dead_letters)
            if letters:
                letter_id = letters[pick % len(letters)][0].decode()
                await w.admin.replay(DeadLetterKind.WEBHOOKS, letter_id)

        self.run(replay())

    def receiver_answers(self, ok: bool) -> None:
        self.note("receiver")
        self.world.receiver.ok = ok

    # ----- the promises -------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        try:
            self.run(check_invariants(self.world))
        except AssertionError as exc:
            self.stats.failed(exc)
            raise

    def teardown(self) -> None:
        try:
            if self.trace:
                self.stats.interleavings.add(tuple(self.trace))
                try:
                    self.run(drain(self.world))
                    self.run(check_invariants(self.world))
                    self.run(check_final(self.world, self.stats))
                except AssertionError as exc:
                    self.stats.failed(exc)
                    if self.stats.first_failure == self.stats.examples:
                        self.stats.first_failure_trace = list(self.trace)
                    raise
                self.stats.publish_calls += self.world.graph.publish_calls
                self.stats.lost_replies = self.topology.proxy.lost
        finally:
            with contextlib.suppress(Exception):
                self.run(self.world.close())
            self.loop.close()


async def check_invariants(world: World) -> None:
    """The promises, checked against all of Redis and the models (after every step)."""
    g = world.graph
    assert not g.violations, g.violations
    hashes = await _final_hashes(world)
    events = await final_events(world.redis, world.keys.events)
    for key, count in events.items():
        assert count == 1, f"{key}: {count} final events for one generation"
    for h in hashes:
        cid, gen, status = h["container_id"], h["generation"], h.get("status", "")
        if h.get("final") != "1":
            assert events[(cid, gen)] == 0, f"{cid}/{gen}: a final event for a live poll"
            continue
        # One final event per poll: the fault harnesses' judgement, here per generation.
        problem = event_problem(events[(cid, gen)], final=True)
        assert problem is None, f"{cid}/{gen}: final {status} without its event"
        seen = world.finals_seen.setdefault((cid, gen), status)
        assert seen == status, f"{cid}/{gen}: final state changed from {seen} to {status}"
        if status == "PUBLISH_UNCONFIRMED":
            # This poll made a call that could have posted, or took over an earlier one's.
            carried = "earlier poll" in h.get("publish_note", "")
            assert (cid, gen) in g.maybe_posted_polls or carried, (
                f"{cid}/{gen}: PUBLISH_UNCONFIRMED, never published"
            )
        if status == "PUBLISH_FAILED":
            assert g.certain_failures[cid] or "replicas" in h.get("last_error", ""), (
                f"{cid}: PUBLISH_FAILED without an answer that proved it ({h.get('last_error')})"
            )
        if h.get("publish") == "1" and cid in g.maybe_posted and not h.get("children"):
            assert status in ("PUBLISHED", "PUBLISH_UNCONFIRMED", "CANCELLED"), (
                f"{cid}: its publish could have posted, yet it ended {status}"
            )
        # (A later poll of the id without publish sees PUBLISHED with no media id: not this.)
        if status == "PUBLISHED" and cid in g.answered_media and h.get("publish") == "1":
            assert h.get("media_id") == g.answered_media[cid], (
                f"{cid}: published with media id {g.answered_media[cid]}, recorded "
                f"{h.get('media_id')!r}: "
                + _show(h, "generation", "publish_status", "publish_note", "last_run", "runs")
            )
        if status == "TIMED_OUT" and "within the window" in h.get("last_error", ""):
            _ended_in_its_window(h)
        # The history is written by the very script calls that count the checks (issue 23):
        # its check entries since this poll's enqueue are the hash's checks (unless the cap
        # dropped the enqueue's entry).
        raw = await world.redis.get(world.keys.history(cid))
        story = parse_history(raw)
        if raw is not None and len(raw) < HISTORY_MAX_BYTES - 200:
            assert checks_of_last_poll(story) == int(h.get("checks") or 0), (
                f"{cid}/{gen}: {checks_of_last_poll(story)} check entries in its history, "
                f"checks={h.get('checks')}: {[str(e.kind) for e in story]}"
            )


def _ended_in_its_window(h: dict[str, str]) -> None:
    """A poll that timed out used its window: every check it had, or no next check fitted
    before its deadline (pushed out by throttling, up to the cap) and the slack."""
    start = float(h.get("children_ready_at") or h["enqueued_at"])
    deadline = float(h["deadline_at"])
    schedule = Schedule(INTERVAL, round(deadline - start, 1))
    end = deadline + min(float(h.get("window_delay") or 0), MAX_DELAY)
    checks = int(h.get("checks") or 0)
    finalized = float(h["finalized_at"])
    no_room = finalized + INTERVAL > end + schedule.slack - 0.01
    assert checks >= schedule.max_checks or no_room, (
        f"{h['container_id']}: TIMED_OUT after {checks} of {schedule.max_checks} checks, "
        f"{end - finalized:.2f}s before its deadline: "
        + _show(
            h,
            "last_error",
            "runs",
            "enqueued_at",
            "deadline_at",
            "finalized_at",
            "window_delay",
            "last_checked_at",
            "carousel_parent",
            "intake_entry",
        )
    )


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
            hashes = await _final_hashes(world)
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
    live = [h["container_id"] for h in await _final_hashes(world) if h.get("final") != "1"]
    raise AssertionError(f"not final after {DRAIN_SECONDS:g}s of draining: {live}")


def _show(h: dict[str, str], *names: str) -> str:
    return " ".join(f"{n}={h.get(n)}" for n in names)


async def _leases_run_out(world: World) -> None:
    """Time passes for leases held by no run that is still going (a claim whose reply was
    lost, a run that vanished): their jobs are due again, as when a lease ends."""
    going = {r.job.token for r in world.runs if not r.task.done() and not r.killed}
    for raw in await _queued(world):
        job_id = raw.decode()
        token = await world.redis.get(world.keys.job_lock(job_id))
        if token is not None and token.decode() not in going:
            await world.redis.delete(world.keys.job_lock(job_id))
            await world.redis.zadd(world.queue_of(job_id), {job_id: 0}, xx=True)


async def _queued(world: World) -> list[bytes]:
    """Every queued job, of both queues, in the order one shared queue would hold them."""
    return [job_id for job_id, _ in await _scored(world)]


async def _scored(world: World) -> list[tuple[bytes, float]]:
    """(job id, due ms) of both queues (the checks' and the deliveries'), as ZRANGE orders one
    queue: by score, then by id; so the rules pick jobs as they did from one shared queue."""
    both = []
    for queue in (world.keys.queue, world.keys.webhook_queue):
        both += await world.redis.zrange(queue, 0, -1, withscores=True)
    return sorted(both, key=lambda pair: (pair[1], pair[0]))


async def _account_field(world: World, name: str) -> str | None:
    raw = await world.redis.hget(world.keys.account("default"), name)  # type: ignore[misc]
    return raw.decode() if raw is not None else None


async def _expire(run: Run) -> None:
    """The run's timeout fires (from inside the event loop, as the runner's timer would)."""
    run.job.deadline.expire()


async def _redis_now(world: World) -> float:
    seconds, micros = await world.redis.time()
    return float(seconds) + float(micros) / 1e6


async def check_final(world: World, stats: Stats) -> None:
    """After the drain: every poll final; every webhook delivered or dead-lettered with its own
    URL and body; carousels that timed out had a child that never FINISHED."""
    hashes = {h["container_id"]: h for h in await _final_hashes(world)}
    for h in hashes.values():
        assert h.get("final") == "1", f"{h['container_id']}: not final"
        stats.finals[h["status"]] += 1
        if (
            h["status"] == "TIMED_OUT"
            and h.get("children")
            and "children not all FINISHED" in h.get("last_error", "")
        ):
            kids = [hashes.get(k) or {} for k in h["children"].split(",")]
            assert any(
                k.get("status") != "FINISHED"
                or float(k.get("finalized_at", "inf")) > float(h["finalized_at"])
                for k in kids
            ), (
                f"carousel {h['container_id']} timed out although all its children FINISHED: "
                + _show(h, "generation", "children_pending", "enqueued_at", "deadline_at")
                + "; "
                + "; ".join(
                    _show(
                        k,
                        "container_id",
                        "status",
                        "finalized_at",
                        "carousel_parent",
                        "parent_generation",
                        "generation",
                        "enqueued_at",
                    )
                    for k in kids
                )
            )
    dead: dict[tuple[str, str], dict[bytes, bytes]] = {}
    for _, raw in await world.redis.xrange(world.keys.webhook_dead_letters):
        dead[(raw[b"container_id"].decode(), raw[b"generation"].decode())] = raw
    delivered: dict[int, list[dict[str, Any]]] = {}
    for n, sent in world.receiver.got:
        delivered.setdefault(n, []).append(json.loads(sent))
    ended = {
        (ev[b"container_id"].decode(), ev.get(b"generation", b"").decode())
        for _, ev in await world.redis.xrange(world.keys.events)
    }
    for (cid, gen), n in world.hooks.items():
        url = world.receiver.url(n)
        if (cid, gen) not in ended:
            # That poll never ended (a later one replaced it): no delivery is owed.
            continue
        got = [b for b in delivered.get(n, []) if b["delivery_id"].endswith(f":{gen}")]
        letter = dead.get((cid, gen))
        assert got or letter is not None, f"{cid}/{gen}: webhook neither delivered nor dead"
        if letter is not None and not got:
            assert letter.get(b"target", b"").decode() == url, (
                f"{cid}/{gen}: dead-lettered for {letter.get(b'target')!r}, not its own {url} "
                f"({letter[b'reason'].decode()})"
            )
    for n, bodies in delivered.items():
        owners = {gen for (cid, gen), m in world.hooks.items() if m == n}
        for one in bodies:
            gen = one["delivery_id"].rsplit(":", 1)[1]
            assert gen in owners, f"a delivery of {one['container_id']}/{gen} reached hook {n}"


@contextlib.contextmanager
def machine(root: Path) -> Iterator[tuple[type[LifecycleModel], Stats]]:
    """The state machine class bound to a fresh Redis pair under ``root``."""
    # The service's own log lines (a refused claim, a dead-lettered webhook) are expected here.
    service_log = logging.getLogger("threads_poller")
    level = service_log.level
    service_log.setLevel(logging.CRITICAL)
    topology = Topology(root)
    stats = Stats()
    cls = type("Lifecycle", (LifecycleModel,), {"topology": topology, "stats": stats})
    try:
        yield cls, stats
    finally:
        topology.close()
        service_log.setLevel(level)
