"""The lifecycle model's base and its rarer events: ``FaultSteps`` holds the machine's world
and event loop, runs a step's coroutines on it and counts the steps; its methods are the faults
(a stalled or dead worker, a lease that runs out, a timeout, a partition, a failover, a Redis
restart, a replayed webhook...) that the ``fault_*`` rules of bench/model/rules.py draw from
``FAULTS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis.stateful import RuleBasedStateMachine

from bench.model.topology import Topology
from bench.model.world import Stats, World, expire, queued
from worker.runtime.app import MAX_RUNS_PER_POLL

T = TypeVar("T")

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


class FaultSteps(RuleBasedStateMachine):
    """The machine's base: one example's world on its own event loop, and the rarer events
    (``fault`` picks one by name). ``topology`` and ``stats`` are set on the class by the
    runner (bench/model/rules.py's ``machine``)."""

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

    def claim_and_run(self, pick: int, count: int = 1) -> None:
        """Claim and run ``count`` queued jobs, one at a time (fewer once the queues are dry)."""
        for i in range(count):
            self.note("claim_and_run")
            if not self.run(self.world.claim_and_run(pick + i)):
                return

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

    # ----- the faults ----------------------------------------------------------------------

    def cancel(self, cid: str) -> None:
        self.note("cancel")
        self.run(self.world.admin.cancel(cid, reason="model"))

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
            self.run(expire(run))
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
        self.run(expire(run))
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
        for job_id in self.run(queued(w)):
            ids = self.run(queued(w))
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
