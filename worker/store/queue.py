"""The job protocol on Redis: claim, release, settle; arq's key layout, our own scripts.

The queue is arq's: a sorted set of job ids scored by due time (ms), each job's data under
``arq:job:<id>`` (JSON, ``worker.store.jobdata``: never pickle), its lock under
``arq:in-progress:<id>`` and its try counter under ``arq:retry:<id>``. So arq's ``Job.status()``
reads our jobs correctly, and a job enqueued with arq's ``enqueue_job`` runs here (both given
``jobdata``'s ``job_serializer`` / ``job_deserializer``).

On that layout, a run owns its job. A claim (``lua/claim.lua``) gives each run a token
of its own in the job's lock, for a short lease (``LEASE_SECONDS``), and moves the job's score to
the lease's end; the runner renews the leases of its running jobs (``lua/renew.lua``, one round
trip for all of them) for as long as they run. Every write a run makes afterwards
(``record.lua``, ``settle.lua``, ``release.lua``, ``account.lua``, ``publish_claim.lua``,
``webhook_settle.lua``, ``rewrite.lua``, ``renew.lua``) first checks that the lock still holds
that token: a run that stalled past its lease (SIGSTOP, a VM freeze) or a duplicate changes
nothing, and the job, due again when the lease ended, is run by its successor. No path of a run
deletes a live poll's job: only a fenced final record ends it.

There are two such queues, each claimed by a runner of its own: the checks' (arq's queue,
``{prefix}:queue``, where foreign arq jobs go too) and the webhook deliveries'
(``{prefix}:webhooks:queue``), so that a delivery hanging on its receiver holds a delivery slot,
never a check's. A claim hands a due job of the other queue over to it instead of claiming it
(a delivery an earlier release put in the shared queue, say).

Job data is never trusted beyond its format. A job of ours is named by its id (a poll's check,
a final state's delivery: ``jobdata.job_by_id``); data that is not the format, is gone, or
disagrees with the id is refused, and the run runs the job as its id says (``replanned``), and
writes the job's data again in the format (``rewrite``, fenced), so the refusal is logged once.
Data of another id that cannot be read is ``broken``: that job is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.core.lease import cutoff, lease_end
from worker.store import scripts
from worker.store.cluster import DeploymentCluster
from worker.store.jobdata import (
    CHECK_FUNCTION,
    DELIVER_FUNCTION,
    JobCall,
    JobDataError,
    decode_job,
    encode_job,
    job_by_id,
)
from worker.store.keys import Keys
from worker.store.script_args import ClaimArgs

log = logging.getLogger("threads_poller.queue")

RawHash = Mapping[bytes | str, bytes | str]
T = TypeVar("T")

# A write refused by Redis is tried again after these pauses (then every last one), while the
# run's timeout allows.
_WRITE_BACKOFF_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)

# A claim names the jobs due first for the next one (its candidates: their keys are declared):
# as many as it may claim, within these bounds. A claim whose due jobs were not named calls the
# script again at once, at most this many times in all.
_MIN_CANDIDATES = 16
_MAX_CANDIDATES = 500
_CLAIM_ROUNDS = 3
# The accounts of this many check jobs are remembered (to name their account's hash next time).
_ACCOUNTS_REMEMBERED = 65_536
_ACCOUNT_FIELDS = (
    "throttled_until",
    "throttle_level",
    "token_rejected_fp",
    "token_rejected_reason",
)


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account's shared state as a claim read it (``{prefix}:account:{account}``)."""

    throttled_until: float = 0.0
    throttle_level: int = 0
    token_rejected_fp: str = ""
    token_rejected_reason: str = ""

    @classmethod
    def from_reply(cls, reply: Sequence[Any] | None) -> AccountState:
        if not reply:
            return cls()
        until, level, fp, reason = (text(v) for v in reply)
        return cls(float(until or 0), int(float(level or 0)), fp, reason)


class RunDeadline:
    """A run's time limit (the runner's ``asyncio.timeout``), bound to its lease, which the job
    may hold off while it writes down an answer it already has (``hold``).

    The timer fires at the run's own time limit (its job timeout) or when its lease ends,
    whichever comes first: the runner renews the lease while the run works (``renewed``), so
    only a run whose renewals stopped (Redis away, the process frozen) reaches the lease's end,
    and one whose renewal found the lock taken (``lose``) stops at once. Past its lease a run's
    writes are refused anyway (fenced by its token) and its job runs again elsewhere.

    Why the hold: a publish answer that arrives just before the run's timeout must still be
    recorded; cancelling the run between the answer and its record would throw away the media id
    and leave the publish ambiguous although Meta answered. A hold lasts at most until the lease,
    as last renewed, ends; a lost lease ends it at once.
    """

    def __init__(self) -> None:
        self._timeout: asyncio.Timeout | None = None
        self._due: float | None = None  # the run's own limit (the event loop's time)
        self._lease_end: float | None = None  # the event loop's time; None: not known yet
        self._holds = 0
        self._lost = False

    def bind(self, timeout: asyncio.Timeout, *, lease_end: float, due: float | None = None) -> None:
        """Called by the runner inside ``async with asyncio.timeout(...) as timeout``; ``due``:
        the run's own limit when the timeout was set to fire earlier (at the lease's end)."""
        self._timeout = timeout
        self._due = timeout.when() if due is None else due
        # A renewal that came before the bind (while the run started) is kept.
        self._extend(lease_end)

    def unbind(self) -> None:
        """Called by the runner as the run leaves its timeout's block: what comes later (a
        renewal's reply, a loss) is remembered but reschedules nothing."""
        self._timeout = None

    @property
    def lease_over(self) -> bool:
        """True once the lease is lost or has run out as far as this run can tell."""
        if self._lost:
            return True
        end = self._lease_end
        return end is not None and asyncio.get_running_loop().time() >= end

    @property
    def lease_lost(self) -> bool:
        """True when a renewal found the lock no longer this run's."""
        return self._lost

    def renewed(self, lease_end: float) -> None:
        """The lease now ends at ``lease_end`` (the event loop's time)."""
        self._extend(lease_end)

    def lose(self) -> None:
        """The lease is gone (the lock holds another token, or none): stop now, holds too."""
        self._lost = True
        self._apply()

    def expire(self) -> None:
        """End the run now, as its timeout would (at once, or when a hold ends)."""
        self._due = asyncio.get_running_loop().time()
        self._apply()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """No timeout inside (up to the lease's end): for recording an answer in hand."""
        timeout = self._timeout
        if timeout is None or timeout.expired():
            # Not run by a runner, or already cut off (the cancellation is on its way).
            yield
            return
        self._holds += 1
        self._apply()
        try:
            yield
        finally:
            self._holds -= 1
            # A deadline that passed during the hold fires now; one still ahead is restored.
            self._apply()

    def _extend(self, lease_end: float) -> None:
        # Replies of renewals may come back out of order: a lease never ends earlier than it did.
        end = self._lease_end
        self._lease_end = lease_end if end is None else max(end, lease_end)
        self._apply()

    def _apply(self) -> None:
        timeout = self._timeout
        if timeout is None or timeout.expired():
            return
        when = cutoff(
            due=self._due,
            lease_ends=math.inf if self._lease_end is None else self._lease_end,
            holding=self._holds > 0,
            lost=self._lost,
            now=asyncio.get_running_loop().time(),
        )
        # Rescheduling cancels the timer and makes a new one: not when it fires then already
        # (a run's bind, most renewals of a run that ends before its lease would).
        if when != timeout.when():
            timeout.reschedule(when)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """One run of one job: what the claim handed this worker."""

    job_id: str
    token: str
    try_: int
    # Redis' clock (ms) when the job was claimed, and this process's monotonic clock when the
    # claim's reply arrived: a run's "now" is Redis' time at the claim plus the time elapsed
    # since, so no decision reads this host's wall clock (hosts may disagree by seconds).
    claimed_ms: int
    claimed_mono: float = 0.0
    function: str = ""
    args: tuple[Any, ...] = ()
    # Why the data could not be read and the job is not run ("" when it could).
    broken: str = ""
    # Why the data was refused (not the format, gone, or not what the id says) while the id says
    # what the job is: ``function`` and ``args`` come from the id; "" when they are the data's.
    replanned: str = ""
    # The refused data (None when it was gone): ``JobQueue.rewrite`` replaces only that.
    refused_data: bytes | None = field(default=None, repr=False, compare=False)
    # For a poll's check: its hash and its account's state, read by the claim.
    state: RawHash | None = None
    account: AccountState = field(default_factory=AccountState)
    # True while ``account`` is not read yet (the claim named the account, not its state).
    account_unread: bool = False
    # The run's time limit, bound by the runner (worker.runtime.runner).
    deadline: RunDeadline = field(default_factory=RunDeadline, compare=False)
    # This process's monotonic clock when the lease the claim gave ends at the latest: counted
    # from before the claim was sent (Redis set the lock then or later). Renewals push it out
    # in ``deadline``; inf when unknown (a job made by hand).
    lease_until: float = math.inf

    def now(self) -> float:
        """Redis' clock now (s), as far as this run can tell."""
        return self.claimed_ms / 1000 + (time.monotonic() - self.claimed_mono)

    def now_ms(self) -> int:
        return int(self.now() * 1000)


@dataclass(frozen=True, slots=True)
class Claim:
    now_ms: int
    jobs: list[ClaimedJob]
    # The earliest due time after now (ms) when nothing more is due now (fewer jobs than the
    # limit were claimed); None if none, or if more may be due now.
    next_due_ms: int | None


class JobQueue:
    """One queue of a deployment as seen by workers: the checks' (``{prefix}:queue``), or with
    ``deliveries`` the webhook deliveries' (``{prefix}:webhooks:queue``)."""

    def __init__(
        self, redis: Redis, keys: Keys, *, job_ttl_seconds: int, deliveries: bool = False
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.job_ttl_ms = job_ttl_seconds * 1000
        self.deliveries = deliveries
        # This queue's key, and the other one's (where a claim hands over what is not its own).
        self.key = keys.webhook_queue if deliveries else keys.queue
        self.other_key = keys.queue if deliveries else keys.webhook_queue
        # The next claim's candidates (lua/claim.lua) and the accounts of the checks claimed.
        self._candidates: list[str] = []
        self._accounts: OrderedDict[str, str] = OrderedDict()
        self._last_account = "default"
        self._warned: set[str] = set()
        # A claim made in a turn of the event loop where checks record goes with their records
        # (scripts.Batched: one send instead of two).
        self._claim = scripts.Batched(scripts.register(redis, "claim.lua"))
        self._renew = scripts.register(redis, "renew.lua")
        self._release = scripts.register(redis, "release.lua")
        self._settle = scripts.register(redis, "settle.lua")
        self._rewrite = scripts.register(redis, "rewrite.lua")

    async def claim(self, worker: str, *, limit: int, lease_ms: int) -> Claim:
        """Claim up to ``limit`` due jobs. Every key the claim touches is declared (lib.lua):
        the keys of the jobs the last claim named as due first (its candidates). Due jobs it
        did not name (enqueued since) are left by the script and named in its reply, and claimed
        at once by a second call: in the steady state a claim is one round trip."""
        jobs: list[ClaimedJob] = []
        now_ms, nxt = 0, ""
        for _ in range(_CLAIM_ROUNDS):
            sent = time.monotonic()
            keys, unrunnable = self._candidate_keys(limit - len(jobs))
            reply = await self._claim(
                keys=[self.key, self.other_key, *keys],
                args=[
                    ClaimArgs(
                        limit=limit - len(jobs),
                        lease_ms=lease_ms,
                        worker=worker,
                        job_prefix=self.keys.job_data_prefix,
                        lock_prefix=self.keys.job_lock_prefix,
                        tries_prefix=self.keys.job_tries_prefix,
                        check_prefix=self.keys.check_job_prefix,
                        result_prefix=self.keys.result_prefix,
                        job_ttl_ms=self.job_ttl_ms,
                        webhook_prefix=self.keys.webhook_job_prefix,
                        queue="deliveries" if self.deliveries else "checks",
                        candidates=min(max(limit, _MIN_CANDIDATES), _MAX_CANDIDATES),
                        candidates_when_left=_MAX_CANDIDATES,
                        account_prefix=self.keys.account_prefix,
                    ).to_json(),
                    *unrunnable,
                ],
            )
            mono = time.monotonic()
            now_ms = int(reply[0])
            nxt = text(reply[1])
            self._candidates = [text(v) for v in reply[2]]
            until = lease_end(sent, lease_ms / 1000)
            parts = [reply[i : i + 6] for i in range(4, len(reply), 6)]
            jobs += [_claimed(self.keys, now_ms, mono, part, until) for part in parts]
            if not int(reply[3]) or len(jobs) >= limit:
                break
        await self._read_accounts(jobs)
        return Claim(now_ms, jobs, int(float(nxt)) if nxt else None)

    def _candidate_keys(self, limit: int) -> tuple[list[str], list[str]]:
        """The keys of this claim's candidates: of as many of its own jobs as it may claim (a
        few more: some may be held), the lock of any job of the other queue (to hand over); and
        the ids whose keys cannot be declared (in cluster mode, outside the deployment's slot)."""
        keys: list[str] = []
        unrunnable: list[str] = []
        full = max(limit, _MIN_CANDIDATES)
        cluster = self.redis if isinstance(self.redis, DeploymentCluster) else None
        for job_id in self._candidates:
            lock = self.keys.job_lock(job_id)
            if (
                cluster is not None
                and not job_id.startswith(self.keys.prefix)
                and cluster.keyslot(lock) != cluster.slot
            ):
                # Not ours (a foreign arq job without the hash tag): a script of this slot can
                # never touch its keys. Parked by the claim, not left due for ever.
                if job_id not in self._warned and len(self._warned) < 1000:
                    self._warned.add(job_id)
                    log.warning(
                        "a job in the queue has keys outside the deployment's slot (its id has "
                        "no hash tag): it cannot run in cluster mode; parked for an hour",
                        extra={"job_id": job_id[:200]},
                    )
                unrunnable.append(job_id)
                continue
            keys.append(lock)
            if job_id.startswith(self.keys.webhook_job_prefix) != self.deliveries:
                continue
            if full <= 0:
                continue
            full -= 1
            keys += [self.keys.job_tries(job_id), self.keys.job_data(job_id)]
            cid = check_container(self.keys, job_id)
            if cid is not None:
                # The account a check's hash names is only known once it is read: the one this
                # job had at its last claim here, else the last one seen (most deployments poll
                # for one account, or a few). A wrong guess costs one read after the claim.
                account = self._accounts.get(job_id, self._last_account)
                keys += [self.keys.result(cid), self.keys.account(account)]
        return keys, unrunnable

    async def _read_accounts(self, jobs: list[ClaimedJob]) -> None:
        """Learn the accounts of the checks claimed, and read those the claim could not."""
        missing: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            if job.state is None:
                continue
            name = text(job.state.get(b"account") or job.state.get("account")) or "default"
            self._accounts[job.job_id] = name
            self._accounts.move_to_end(job.job_id)
            self._last_account = name
            if job.account_unread:
                missing.setdefault(name, []).append(i)
        while len(self._accounts) > _ACCOUNTS_REMEMBERED:
            self._accounts.popitem(last=False)
        if not missing:
            return
        names = list(missing)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.keys.account(name), list(_ACCOUNT_FIELDS))
            replies = await pipe.execute()
        for name, reply in zip(names, replies, strict=True):
            state = AccountState.from_reply(reply)
            for i in missing[name]:
                jobs[i] = dataclasses.replace(jobs[i], account=state, account_unread=False)

    async def renew(self, jobs: Sequence[ClaimedJob], *, lease_ms: int) -> set[tuple[str, str]]:
        """Renew the leases of ``jobs`` for ``lease_ms`` in one round trip (each only while its
        lock holds its run's token); the runs (job id, token) that no longer own their job."""
        if not jobs:
            return set()
        args: list[str | int] = [lease_ms, self.keys.job_lock_prefix]
        for job in jobs:
            args += [job.job_id, job.token]
        locks = [self.keys.job_lock(job.job_id) for job in jobs]
        # This queue's own key: a delivery's score is in the deliveries' queue.
        lost = await self._renew(keys=[self.key, *locks], args=args)
        return {(text(lost[i]), text(lost[i + 1])) for i in range(0, len(lost) - 1, 2)}

    async def release(self, job: ClaimedJob, *, delay_ms: int) -> bool:
        """Give the job back, due again in ``delay_ms``; False if the run no longer owned it."""
        done = await self._release(
            keys=[self.key, self.keys.job_lock(job.job_id)],
            args=[job.token, job.job_id, max(0, delay_ms)],
        )
        return bool(done)

    async def settle(
        self,
        job: ClaimedJob,
        *,
        retry_in_ms: int | None,
        unless_live: tuple[str, str] | None = None,
    ) -> bool:
        """End the job (``retry_in_ms`` None) or run it again later; False if not owned.

        ``unless_live=(container_id, generation)``: end it only if that poll is over or was
        replaced (a guard: a check job is never ended while its poll is live)."""
        cid, generation = unless_live or ("", "")
        done = await self._settle(
            keys=[
                self.key,
                self.keys.job_lock(job.job_id),
                self.keys.job_tries(job.job_id),
                self.keys.job_data(job.job_id),
                self.keys.result(cid),
            ],
            args=[
                job.token,
                job.job_id,
                "done" if retry_in_ms is None else "retry",
                retry_in_ms or 0,
                self.job_ttl_ms,
                generation,
            ],
        )
        return bool(done)

    async def rewrite(self, job: ClaimedJob) -> bool:
        """Write a re-planned job's data again, in the format, as its id says (fenced, and only
        over the data its claim refused); False when nothing was written."""
        data = encode_job(job.function, job.args, job.claimed_ms)
        refused = job.refused_data
        done = await self._rewrite(
            keys=[
                self.key,
                self.keys.job_lock(job.job_id),
                self.keys.job_data(job.job_id),
            ],
            args=[
                job.token,
                job.job_id,
                data,
                "0" if refused is None else "1",
                b"" if refused is None else refused,
                self.job_ttl_ms,
            ],
        )
        return bool(done)

    async def owner(self, job_id: str) -> str | None:
        """The token of the run holding ``job_id`` (None when no run holds it)."""
        value = await self.redis.get(self.keys.job_lock(job_id))
        return text(value) or None


def check_container(keys: Keys, job_id: str) -> str | None:
    """The container of a poll's check job id (``<prefix>:check:<id>:<generation>``), else
    None; as lua/claim.lua reads it."""
    if not job_id.startswith(keys.check_job_prefix):
        return None
    cid, sep, _ = job_id[len(keys.check_job_prefix) :].rpartition(":")
    return cid if sep else None


def _claimed(
    keys: Keys, now_ms: int, mono: float, part: Sequence[Any], lease_until: float
) -> ClaimedJob:
    job_id, token, data, try_, state, account = part
    jid, tok, n = text(job_id), text(token), int(try_)
    call: JobCall | None = None
    why = "the job's data is gone"
    if data is not None:
        try:
            call = decode_job(data)
        except JobDataError as exc:
            why = f"unreadable job data: {exc}"
    planned = job_by_id(keys, jid)
    replanned, refused = "", None
    if planned is not None:
        if call is not None and (
            call.function != planned.function or call.args[:2] != planned.args
        ):
            why = f"job data for {call.function}{call.args[:2]!r}, not what its id says"
            call = None
        if call is None:
            call, replanned, refused = planned, why, data
    elif call is not None and call.function in (CHECK_FUNCTION, DELIVER_FUNCTION):
        # Ours are only ever under their own ids: data that says otherwise was not written here.
        return ClaimedJob(
            jid,
            tok,
            n,
            now_ms,
            mono,
            broken=f"a {call.function} job under a foreign id",
            lease_until=lease_until,
        )
    if call is None:
        return ClaimedJob(jid, tok, n, now_ms, mono, broken=why, lease_until=lease_until)
    return ClaimedJob(
        jid,
        tok,
        n,
        now_ms,
        mono,
        function=call.function,
        args=call.args,
        broken="",
        replanned=replanned,
        refused_data=bytes(refused) if refused is not None else None,
        state=dict(zip(state[::2], state[1::2], strict=True)) if state else None,
        account=AccountState.from_reply(account if isinstance(account, list) else None),
        account_unread=isinstance(account, bytes | str),
        lease_until=lease_until,
    )


async def persist(what: str, write: Callable[[], Awaitable[T]]) -> T:
    """Run a fenced write, again after a Redis error, until it goes through (or the run's
    timeout cancels it). Fenced writes are safe to repeat: a repeat of one that went through
    is refused as stale."""
    for attempt in range(10_000):
        try:
            return await write()
        except (RedisError, OSError) as exc:
            pause = _WRITE_BACKOFF_SECONDS[min(attempt, len(_WRITE_BACKOFF_SECONDS) - 1)]
            if attempt in (0, 10):
                log.warning(
                    "%s refused by Redis; trying again",
                    what,
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300], "attempt": attempt + 1},
                )
            await asyncio.sleep(pause)
    raise RuntimeError(f"{what}: gave up")  # pragma: no cover - the run's timeout comes first
