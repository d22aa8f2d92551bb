"""arq's Worker with one change: how it claims (and reads) due jobs.

Stock arq (0.28) claims each due job with WATCH, EXISTS, ZSCORE and MULTI/PSETEX/EXEC: four round
trips per job, about a fifth of a check's worker CPU. And a connection cut while it WATCHes (a
Redis restart, a failover, a proxy dropping idle connections) raises ``WatchError`` from
``pipe.exists``, outside the ``try`` arq has for it: the main loop ends and the worker exits, with
a job slot leaked. ``PollerWorker`` claims a whole batch with one Lua script instead
(``lua/claim_jobs.lua``), and a failed claim is logged and tried again on the next poll.

It also keeps a Redis error out of arq's main loop. redis-py retries a command, but not the
handshake of the new connection it retries on, and arq re-raises a job run's exception (from its
own bookkeeping: reading the job, re-scheduling it) in the loop, which then ends. Here such an
error is logged; the job is left as a killed worker would leave it (in the queue, locked by this
worker's token), so the next poll runs it again, and ``check_container`` waits out any time left
before its check is due.

The claim also reads each job and counts its try, which stock ``run_job`` does in a round trip
of its own; a claimed job then runs through ``arq_job_runner.run_claimed_job``, arq's
``run_job`` minus that round trip. So a check costs 3 round trips of arq's and ours instead of 8.
Everything else (running jobs, retries, timeouts, the lock's lifetime, shutdown) is arq's own
code, so the Redis data stays exactly what arq expects; arq is pinned to 0.28.* for this reason,
and a test fails when the installed arq's ``run_job`` differs from the one copied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from importlib import resources
from signal import Signals
from typing import Any

from arq import Worker
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio.client import Redis
from redis.exceptions import RedisError

from worker.arq_job_runner import run_claimed_job

log = logging.getLogger("threads_poller.worker")

# How long a failed claim keeps quiet before it warns again: a Redis restart fails every poll
# (several a second) until Redis is back.
_WARN_EVERY_SECONDS = 10.0


def _claim_script() -> str:
    return resources.files("worker").joinpath("lua", "claim_jobs.lua").read_text(encoding="utf-8")


def worker_token() -> str:
    """Unique per worker process; stored as the value of the jobs' in-progress locks."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PollerWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token = worker_token()
        self._claim_source = _claim_script()
        self._claim: Any = None
        self._claim_pool: Redis | None = None
        self._last_redis_warning = 0.0
        self.redis_errors = 0

    def _claimer(self) -> Any:
        # arq creates its pool in main(); bind the script to whichever pool is current.
        if self._claim is None or self._claim_pool is not self.pool:
            self._claim_pool = self.pool
            self._claim = self.pool.register_script(self._claim_source)
        return self._claim

    # arq's own INFO lines are off below DEBUG (worker/logs.py), so say what a signal starts.
    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self._log_shutdown(signum, "waiting for running checks")
        super().handle_sig_wait_for_completion(signum)

    def handle_sig(self, signum: Signals) -> None:
        self._log_shutdown(signum, "cancelling running checks")
        super().handle_sig(signum)

    def _log_shutdown(self, signum: Signals, action: str) -> None:
        log.info(
            "shutdown on %s: %s",
            Signals(signum).name,
            action,
            extra={
                "running": sum(not t.done() for t in self.tasks.values()),
                "wait_s": self._job_completion_wait,
                "jobs_complete": self.jobs_complete,
                "jobs_retried": self.jobs_retried,
                "jobs_failed": self.jobs_failed,
            },
        )

    def _warn_redis_error(self, what: str, exc: BaseException) -> None:
        self.redis_errors += 1
        now = time.monotonic()
        if now - self._last_redis_warning >= _WARN_EVERY_SECONDS:
            self._last_redis_warning = now
            log.warning(
                "%s failed on a Redis error; retrying on the next poll",
                what,
                extra={
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                    "redis_errors": self.redis_errors,
                },
            )

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            self._warn_redis_error("polling the queue", exc)

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except (RedisError, OSError) as exc:
            self._warn_redis_error(f"job {job_id}", exc)

    async def _run_claimed(
        self, job_id: str, score: int, job: bytes | None, job_try: int, start_ms: int
    ) -> None:
        if self.allow_abort_jobs:
            # Aborts are read in run_job's own first round trip: let arq do it all (the job's
            # try is then counted twice; this worker never enables aborts).
            await self.run_job(job_id, score)
            return
        try:
            await run_claimed_job(self, job_id, score, job, job_try, start_ms)
        except (RedisError, OSError) as exc:
            self._warn_redis_error(f"job {job_id}", exc)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start the due jobs among ``job_ids`` that nobody holds, as slots allow.

        Like stock arq, it keeps going through the ids as running jobs free their slots, so a
        busy worker keeps all max_jobs slots full between polls instead of refilling them only
        once per poll_delay.
        """
        candidates = []
        for raw in job_ids:
            job_id = raw.decode()
            running = self.tasks.get(job_id)
            # Our own lock carries our token, so the script would hand a job we are running
            # back to us: skip those here.
            if running is None or running.done():
                candidates.append(job_id)
        while candidates and self.allow_pick_jobs:
            if self.job_counter >= self.max_jobs:
                # Wait for a slot, then let any other job ending at the same moment free its
                # slot too, so that one claim takes a batch.
                await self.sem.acquire()
                self.sem.release()
                await asyncio.sleep(0)
                continue
            free = self.max_jobs - self.job_counter
            examined = await self._claim_batch(candidates, free)
            if examined is None:
                return
            candidates = candidates[examined:]

    async def _claim_batch(self, candidates: list[str], free: int) -> int | None:
        """Claim up to ``free`` of ``candidates`` and start them; how many ids were examined
        (None when Redis could not be reached: the caller waits for the next poll)."""
        args = [
            in_progress_key_prefix,
            # arq's own clock: the scores it writes are rounded with it.
            timestamp_ms(),
            int(self.in_progress_timeout_s * 1000),
            self.token,
            free,
            job_key_prefix,
            retry_key_prefix,
            *candidates,
        ]
        try:
            reply = await self._claimer()(keys=[self.queue_name], args=args)
        except (RedisError, OSError) as exc:
            # Nothing was started, so nothing is lost: the jobs stay due and the next poll
            # (poll_delay later) tries again. Locks a lost reply did set carry our token, so
            # that retry takes them back.
            self._warn_redis_error("claiming due jobs", exc)
            return None
        start_ms = timestamp_ms()
        for i in range(1, len(reply), 4):
            job_id = reply[i].decode() if isinstance(reply[i], bytes) else str(reply[i])
            score = int(float(reply[i + 1]))
            # Never blocks: job_counter and the semaphore move together, and at most `free`
            # jobs came back.
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(
                self._run_claimed(job_id, score, reply[i + 2], int(reply[i + 3]), start_ms)
            )
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
        return int(reply[0])
