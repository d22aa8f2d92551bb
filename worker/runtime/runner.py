"""The worker's loop: claim due jobs, run each under its timeout, never lose one.

A small typed runner of our own on arq's Redis key layout (``worker.store.queue``; job data in
our JSON format, ``worker.store.jobdata``, never pickle), in the manner of saq's worker: the loop
only claims and runs; what a job does, and how it settles itself, lives in its function. It
replaces arq's ``Worker`` because arq's end-of-run writes (``finish_job``, ``finish_failed_job``)
are not fenced: a stalled run deletes its successor's job, and a timeout, a Redis error or too
many tries deletes a live poll (README, "Why our own runner").

A run owns its job for a short lease (``LEASE_SECONDS``, 6 s by default), which one task per
runner renews for all of its running jobs every third of a lease, in one round trip
(``JobQueue.renew``). So a run keeps its job for as long as it works, up to its own timeout, while
a killed worker's jobs are due again one short lease after its last renewal, whatever the
timeout. A run whose renewal finds its lock taken, or whose lease runs out unrenewed (Redis away,
the process frozen), is cut off (``RunDeadline``): its writes would be refused anyway.

Every failure path of a run ends in "the job runs again later": an exception or a timeout
releases the job (due again after the spec's ``retry_delay_s``), a shutdown cancellation or a
lapsed lease releases it at once, and when even that write fails (Redis away) the lease expires
and the job is due again by itself. Only the job function's own fenced writes end a job.

A job whose data was refused (``ClaimedJob.replanned``: a pickle of an earlier release, garbage,
gone) but whose id says what it is runs as its id says, after its data is written again in the
format; the refusal is logged once. A job no worker can run (an unknown function, unreadable data
under a foreign id) is given back for a while, logged once per process, and never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from worker.core.lease import (
    DEFAULT_LEASE_SECONDS,
    lease_end,
    next_renewal_in,
    renew_period,
)
from worker.store.queue import ClaimedJob, JobQueue

log = logging.getLogger("threads_poller.runner")

JobFunction = Callable[[ClaimedJob], Awaitable[None]]
GiveUp = Callable[[ClaimedJob, str], Awaitable[None]]

# A job no worker here can run is given back for the longest job timeout + this (a minute by
# default): claimed again about as often as a run of it could have lasted, not every lease.
UNRUNNABLE_MARGIN_SECONDS = 2.0
# How long a drain waits, after cancelling the runs left, for them to give their jobs back.
_RELEASE_WAIT_SECONDS = 3.0
# How long a failed claim keeps quiet before it warns again (a Redis restart fails every poll).
_WARN_EVERY_SECONDS = 10.0
# Jobs no worker runs (an unknown function, unreadable data of a foreign id) whose refusal this
# process remembers having logged.
_NOT_RUNNABLE_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class JobSpec:
    """How to run one job function (its arq function name is ``name``)."""

    name: str
    run: JobFunction
    timeout_s: float
    # After a run that raised or timed out: when the job is due again.
    retry_delay_s: float
    # Runs of one job beyond this call ``give_up`` (which must end the job) instead of ``run``.
    max_tries: int = 1000
    give_up: GiveUp | None = None


@dataclass
class RunnerStats:
    started: int = 0
    settled: int = 0
    failed: int = 0  # raised or timed out, then released
    released: int = 0
    redis_errors: int = 0
    given_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "started": self.started,
            "settled": self.settled,
            "failed": self.failed,
            "released": self.released,
            "redis_errors": self.redis_errors,
            "given_up": self.given_up,
        }


def worker_name() -> str:
    """Unique per worker process; the prefix of its runs' tokens."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Runner:
    queue: JobQueue
    specs: Sequence[JobSpec]
    concurrency: int
    poll_delay_s: float
    # The shortest sleep between two claims when nothing more is due: jobs falling due one by
    # one (a paced account's checks, a slot apart) are claimed and run a few at a time, up to
    # this much later than their due time, instead of one claim and one cold run each.
    claim_gap_s: float = 0.0
    name: str = field(default_factory=worker_name)
    stats: RunnerStats = field(default_factory=RunnerStats)
    # How long a claim or renewal keeps a job (LEASE_SECONDS); renewed every third of it.
    lease_s: float = DEFAULT_LEASE_SECONDS
    # False: leases are renewed only when ``renew`` is called (the lifecycle model steps it).
    renewing: bool = True

    def __post_init__(self) -> None:
        self._specs = {s.name: s for s in self.specs}
        self._renew_every = renew_period(self.lease_s)
        self.unrunnable_delay_s = max(s.timeout_s for s in self.specs) + UNRUNNABLE_MARGIN_SECONDS
        # The runs this runner holds a lease for, by job id and token (a token names a run of
        # one job only; a job may come back to this runner while its earlier run still gives it
        # back), and the task renewing them.
        self._held: dict[tuple[str, str], ClaimedJob] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._wake = asyncio.Event()
        # Set while the loop waits for a run to end because every slot is taken: only then
        # does a run's end wake it (see _done).
        self._full = False
        self._last_warning = 0.0
        self._not_runnable: set[tuple[str, str]] = set()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def running(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        """Take no more jobs (SIGTERM); running ones go on (see ``drain``)."""
        self._accepting = False
        self._wake.set()

    async def run(self) -> None:
        """Claim and start jobs until ``stop``."""
        backoff = self.poll_delay_s
        while self._accepting:
            free = self.concurrency - len(self._tasks)
            if free <= 0:
                self._full = True
                await self._wait(None)
                self._full = False
                continue
            try:
                claim = await self.queue.claim(
                    self.name, limit=free, lease_ms=int(self.lease_s * 1000)
                )
            except (RedisError, OSError) as exc:
                self._warn("claiming due jobs", exc)
                await self._wait(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = self.poll_delay_s
            for job in claim.jobs:
                task = asyncio.create_task(self._run(job), name=f"job {job.job_id}")
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if len(claim.jobs) < free:
                # Nothing more is due: sleep until the next due job, a poll period at most.
                wait = self.poll_delay_s
                if claim.next_due_ms is not None:
                    due_in = (claim.next_due_ms - claim.now_ms) / 1000
                    wait = min(wait, max(self.claim_gap_s, due_in))
                await self._wait(wait)

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for running jobs, then cancel the rest (they are released)."""
        self.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_RELEASE_WAIT_SECONDS)
        renewer = self._renewer
        if renewer is not None and not self._held:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # A freed slot matters only to a loop that had none: one sleeping because nothing
        # more is due wakes at the next due time (the claim said when) or after a poll period.
        # Waking it at every run's end cost an empty claim per check when checks come one by
        # one (a paced account): two claims per check instead of one.
        if self._full:
            self._wake.set()

    async def _wait(self, seconds: float | None) -> None:
        """Sleep ``seconds`` (None: until woken), or until a slot frees or ``stop``."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def execute(self, job: ClaimedJob) -> None:
        """Run one claimed job under its spec: its timeout, its lease (renewed while it runs),
        its give-up, and a release on every path that does not settle it (``run`` starts this
        for each job it claims)."""
        await self._run(job)

    async def renew(self) -> int:
        """Renew the lease of every run this runner holds, in one round trip; a run whose lock
        no longer holds its token is cut off. Returns how many were.

        The new lease is counted from before the renewal was sent (Redis renewed it then or
        later), so a run never believes it holds its job longer than Redis does."""
        jobs = list(self._held.values())
        if not jobs:
            return 0
        sent = time.monotonic()
        lost = await self.queue.renew(jobs, lease_ms=int(self.lease_s * 1000))
        until = self._loop_time(lease_end(sent, self.lease_s))
        for job in jobs:
            if (job.job_id, job.token) in lost:
                job.deadline.lose()
            else:
                job.deadline.renewed(until)
        return len(lost)

    async def _renew_while_held(self) -> None:
        """One task per runner: renews every third of a lease while the runner holds a run,
        then ends (the next run starts it again)."""
        last = time.monotonic()
        while self._held:
            await asyncio.sleep(next_renewal_in(last, time.monotonic(), self._renew_every))
            if not self._held:
                return
            last = time.monotonic()
            try:
                # A renewal that takes a period is abandoned for the next one; runs it could not
                # renew are cut off when their lease ends.
                async with asyncio.timeout(self._renew_every):
                    await self.renew()
            except (RedisError, OSError, TimeoutError) as exc:
                self._warn("renewing leases", exc)
            except Exception:
                # Never end the renewals on a surprise: every running job would lose its lease.
                log.exception("renewing leases failed; trying again")

    def _loop_time(self, monotonic: float) -> float:
        """A time of ``time.monotonic()`` on the event loop's clock (uvloop's need not match)."""
        return asyncio.get_running_loop().time() + (monotonic - time.monotonic())

    async def _run(self, job: ClaimedJob) -> None:
        self._held[job.job_id, job.token] = job
        if self.renewing and (self._renewer is None or self._renewer.done()):
            self._renewer = asyncio.create_task(self._renew_while_held(), name="lease renewal")
        try:
            await self._run_held(job)
        finally:
            self._held.pop((job.job_id, job.token), None)

    async def _run_held(self, job: ClaimedJob) -> None:
        self.stats.started += 1
        spec = self._specs.get(job.function)
        if spec is None:
            why = job.broken or f"no job function named {job.function!r} in this worker"
            if self._first_time(job.job_id, why):
                log.error("job not runnable: %s", why, extra={"job_id": job.job_id})
            # Due again later: a worker of another version may know its function. Data that
            # cannot be read is never run (a job of ours is re-planned from its id instead,
            # below), and stays for an operator to look at.
            await self._release(job, int(self.unrunnable_delay_s * 1000))
            return
        if job.replanned:
            # Data refused (a pickle of an earlier release, garbage, gone, or not what the id
            # says): the job runs as its id says, and its data is written again in the format, so
            # the next run reads it and this is logged once.
            log.error(
                "job data refused, the job runs as its id says: %s",
                job.replanned[:300],
                extra={"job_id": job.job_id, "job_function": job.function},
            )
            await self._rewrite(job)
        try:
            due = asyncio.get_running_loop().time() + spec.timeout_s
            lease_end = self._loop_time(job.lease_until)
            # The run ends at its timeout or when its lease does (renewals push that out); a
            # hold (an answer being recorded) may outlast the timeout, not the lease. The timer
            # is set at the earlier of the two at once (``bind`` then finds it right): one timer
            # a run, not one made and at once replaced.
            async with asyncio.timeout_at(min(due, lease_end)) as timeout:
                job.deadline.bind(timeout, lease_end=lease_end, due=due)
                try:
                    if job.try_ > spec.max_tries and spec.give_up is not None:
                        self.stats.given_up += 1
                        await spec.give_up(job, f"{job.try_ - 1} runs did not settle it")
                    else:
                        await spec.run(job)
                finally:
                    # A renewal's reply may still come while the job is given back.
                    job.deadline.unbind()
            self.stats.settled += 1
        except asyncio.CancelledError:
            # A shutdown: the job is due again at once, for another worker (or this one later).
            await asyncio.shield(self._release(job, 0))
            raise
        except Exception as exc:
            self.stats.failed += 1
            if isinstance(exc, TimeoutError) and job.deadline.lease_over:
                await self._lease_ended(job)
                return
            what = "timed out" if isinstance(exc, TimeoutError) else "failed"
            log.warning(
                "job run %s; it runs again in %.1fs",
                what,
                spec.retry_delay_s,
                extra={
                    "job_id": job.job_id,
                    "job_try": job.try_,
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                },
            )
            await self._release(job, int(spec.retry_delay_s * 1000))

    async def _lease_ended(self, job: ClaimedJob) -> None:
        lost = job.deadline.lease_lost
        log.warning(
            "job run stopped: %s",
            "another run holds its job" if lost else "its lease ran out before a renewal",
            extra={"job_id": job.job_id, "job_try": job.try_},
        )
        if not lost:
            # Its lock may still hold this run's token (the run counts its lease from before it
            # was sent, Redis from after): give the job back at once, as a killed run's would
            # be due when its lease ends. A taken lock refuses this; Redis away: it expires.
            await self._release(job, 0)

    def _first_time(self, job_id: str, why: str) -> bool:
        """Whether this process has not logged ``why`` for ``job_id`` yet (a job no worker runs
        is claimed again after every lease; once per process is enough to find it)."""
        seen = (job_id, why)
        if seen in self._not_runnable:
            return False
        if len(self._not_runnable) >= _NOT_RUNNABLE_REMEMBERED:
            self._not_runnable.clear()
        self._not_runnable.add(seen)
        return True

    async def _rewrite(self, job: ClaimedJob) -> None:
        try:
            await self.queue.rewrite(job)
        except (RedisError, OSError) as exc:
            # The run goes on; the next one refuses the data again (and says so again).
            self._warn(f"rewriting the data of job {job.job_id}", exc)

    async def _release(self, job: ClaimedJob, delay_ms: int) -> None:
        try:
            if await self.queue.release(job, delay_ms=delay_ms):
                self.stats.released += 1
        except (RedisError, OSError) as exc:
            # The lease runs out by itself and the job is due again then.
            self._warn(f"releasing job {job.job_id}", exc)

    def _warn(self, what: str, exc: BaseException) -> None:
        self.stats.redis_errors += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(
                "%s failed on a Redis error; retrying",
                what,
                extra={
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                    "redis_errors": self.stats.redis_errors,
                },
            )
