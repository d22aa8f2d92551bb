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

This module is the state machine's rules (the faults' own steps: bench/model/faults.py; the
deployment: bench/model/world.py; the promises: bench/model/invariants.py). Run it with
``python -m bench.model`` (a long run that prints what it covered) or through
``tests/integration/test_lifecycle_model.py`` (a bounded run in the test command).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from bench.model.faults import FAULTS, FaultSteps
from bench.model.graph import PublishAnswer, StatusAnswer
from bench.model.invariants import check_final, check_invariants
from bench.model.topology import Topology
from bench.model.world import LONG_WINDOW, PARENTS, SINGLES, Stats, account_field, drain, queued
from worker.store.results import EnqueueRequest
from worker.store.scripts import register


class LifecycleModel(FaultSteps):
    """The state machine: its rules (what hypothesis draws) and its promises."""

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

    # Running jobs (FaultSteps.claim_and_run) is what a deployment does most: three rules' worth
    # of the choices (the same method under three rules; hypothesis picks among rules evenly).
    @rule(pick=st.integers(0, 50), count=st.integers(1, 4))
    def run_a(self, pick: int, count: int) -> None:
        self.claim_and_run(pick, count)

    @rule(pick=st.integers(0, 50), count=st.integers(1, 4))
    def run_b(self, pick: int, count: int) -> None:
        self.claim_and_run(pick, count)

    @rule(pick=st.integers(0, 50), count=st.integers(1, 4))
    def run_c(self, pick: int, count: int) -> None:
        self.claim_and_run(pick, count)

    # The rarer events (bench/model/faults.py), two rules' worth together.
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
            until = self.run(account_field(w, "throttled_until"))
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
        for job_id in self.run(queued(w)):
            ids = self.run(queued(w))
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
