"""One row of the fault matrix: its world (a private redis-server, the simulator on its own
thread, real worker processes), a monitor of stranded polls, and the row's accounting.

The harness is black-box: it counts API calls on the simulator's side (``Ledger``) and reads only
the documented Redis schema (through ``Keys``: result hashes, the events stream, arq's job keys
``arq:job:{prefix}:check:{id}:{generation}``, in-progress locks ``arq:in-progress:<job id>``, the
queue ``{prefix}:queue``, account hashes, the intake and dead-letter streams, the workers'
heartbeat set). What every row asserts: ``bench.faults.matrix``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bench.faults.invariants import (
    MAX_RUNS_PER_CALL,
    call_bound,
    event_problem,
    final_events,
    per_container,
)
from bench.faults.ledger import Ledger
from bench.faults.pool import WorkerPool, WorkerProc, retrying, settings_of
from bench.faults.report import RowResult
from bench.harness import RedisServer, SimulatorThread, environment_without_settings
from config import Settings
from simulator import SimulatorState, StatusCall
from simulator.server import RunningSimulator
from worker.client.producer import enqueue_many
from worker.store.keys import Keys

Scale = Literal["ci", "full"]

TOKEN = "fault-matrix-token-not-a-secret"  # noqa: S105 - the simulator's own test token
ACCOUNT = "4200000001"
ACCOUNT_TOKEN = "fault-matrix-account-token"  # noqa: S105
SKEW_ENV = "FAULT_MATRIX_CLOCK_SKEW_SECONDS"

# Every non-final container without a live job for this long: nothing is left to move them.
STUCK_SECONDS = 3.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Expect:
    """The final state a container must reach; ``polls``: how many polls of the id the row
    starts (one final event each)."""

    status: str
    min_checks: int = 1
    polls: int = 1


@dataclass(frozen=True)
class Knobs:
    """A row's settings of the workers (the rest: the service's defaults)."""

    interval: float = 0.5
    window: float = 2.5
    http_timeout: float = 1.0
    job_timeout: float = 2.0
    max_jobs: int = 50
    api_concurrency: int = 50
    pace: float = 0.0
    throttle_backoff: float = 0.5
    throttle_backoff_max: float = 4.0
    webhook_timeout: float = 0.5
    claim_idle: float = 1.0
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def max_checks(self) -> int:
        return math.floor(self.window / self.interval + 1e-9) + 1

    @property
    def slack(self) -> float:
        return min(self.interval / 2, 5.0)

    def env(self) -> dict[str, str]:
        values = {
            "POLL_INTERVAL_SECONDS": repr(self.interval),
            "POLL_MAX_SECONDS": repr(self.window),
            "HTTP_TIMEOUT_SECONDS": repr(self.http_timeout),
            "JOB_TIMEOUT_SECONDS": repr(self.job_timeout),
            "WORKER_MAX_JOBS": str(self.max_jobs),
            "API_MAX_CONCURRENCY": str(self.api_concurrency),
            "ACCOUNT_MAX_REQUESTS_PER_SECOND": repr(self.pace),
            "THROTTLE_BACKOFF_SECONDS": repr(self.throttle_backoff),
            "THROTTLE_BACKOFF_MAX_SECONDS": repr(self.throttle_backoff_max),
            "WEBHOOK_TIMEOUT_SECONDS": repr(self.webhook_timeout),
            "INTAKE_CLAIM_IDLE_SECONDS": repr(self.claim_idle),
        }
        values.update(dict(self.extra))
        return values


def clean_environment() -> dict[str, str]:
    """The caller's environment minus every service setting (nothing may change a row)."""
    env = environment_without_settings()
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", SKEW_ENV)}


class Harness:
    """One row's world: redis-server, simulator, worker processes, a monitor, the accounting."""

    def __init__(self, key: str, knobs: Knobs, workdir: Path, say: Callable[[str], None]) -> None:
        self.key = key
        self.knobs = knobs
        self.workdir = workdir
        self.say = say
        self.prefix = f"fault-matrix-{key}"
        self.keys = Keys(self.prefix)
        self.ledger = Ledger()
        self.expect: dict[str, Expect] = {}
        self.disrupted: Counter[str] = Counter()
        self.extra_runs: list[int | None] = []  # runs of earlier polls, read before a re-enqueue
        self.stranded_seen: dict[str, str] = {}
        self.live_from: dict[str, float] = {}  # sampling of an id starts once its poll exists
        self.generation: dict[str, str] = {}
        self.final_since: dict[str, float] = {}
        self.first_final: dict[str, float] = {}
        self.final_hashes: dict[str, dict[str, str]] = {}
        self._stuck_since: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stack = contextlib.AsyncExitStack()
        self._monitor: asyncio.Task[None] | None = None
        self._sample_every = 0.1
        self.t0 = time.monotonic()
        self.redis_server = RedisServer(workdir / "redis", appendonly=True, appendfsync="no")
        self.state = SimulatorState(
            default_script=("notfound",), tokens={TOKEN: "default", ACCOUNT_TOKEN: ACCOUNT}
        )
        self.ledger.attach(self.state)
        self.sim: RunningSimulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.redis: Redis = cast(Redis, None)
        self.chaos: Redis = cast(Redis, None)
        self.settings: Settings = cast(Settings, None)
        self.pool: WorkerPool = cast(WorkerPool, None)

    @property
    def workers(self) -> list[WorkerProc]:
        return self.pool.workers

    # --- life cycle ---

    async def __aenter__(self) -> Harness:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        await self.redis_server.astart(wait_s=30)
        self._stack.push_async_callback(self.redis_server.astop)
        self._loop = asyncio.get_running_loop()
        sim_thread = SimulatorThread(self.state)
        self.sim = await asyncio.to_thread(sim_thread.start)
        self._stack.push_async_callback(asyncio.to_thread, sim_thread.stop)
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), 30)
        self.redis = Redis.from_url(
            self.redis_server.url,
            socket_timeout=10,
            socket_connect_timeout=2,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        )
        self._stack.push_async_callback(self.redis.aclose)
        self.chaos = Redis.from_url(self.redis_server.url, socket_timeout=10)
        self._stack.push_async_callback(self.chaos.aclose)
        env = clean_environment()
        env.update(
            REDIS_URL=self.redis_server.url,
            THREADS_API_BASE_URL=self.sim.base_url,
            THREADS_ACCESS_TOKEN=TOKEN,
            **{f"THREADS_ACCESS_TOKEN_{ACCOUNT}": ACCOUNT_TOKEN},
            KEY_PREFIX=self.prefix,
            LOG_FORMAT="json",
            LOG_LEVEL="DEBUG",
            METRICS_PORT="0",
            # The workers run the code of this checkout, whatever the venv's editable install.
            PYTHONPATH=str(REPO_ROOT),
        )
        env.update(self.knobs.env())
        # Logs under logs/, run in the work dir (no stray .env file).
        self.pool = WorkerPool(env, self.workdir / "logs", cwd=self.workdir)
        self.settings = settings_of(env)
        self._stack.push_async_callback(self._stop_everything)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def base_env(self) -> dict[str, str]:
        return self.pool.env

    async def _stop_everything(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.stop_monitor()
        await self.stop_workers(grace=2.0)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        async def wrap() -> Any:
            return await coro

        task = asyncio.create_task(wrap())
        self._tasks.append(task)
        return task

    async def wait_tasks(self, wait_s: float = 60.0) -> list[str]:
        """Wait for the row's helper tasks, at most ``wait_s``: a helper that never ends (a
        hook waiting on a worker that will not answer) must fail the row, not hang the run.
        Returns a description of each task cancelled for overrunning."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=wait_s)
            pending = list(pending_set)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        return [f"helper task overran {wait_s:g} s: {t.get_coro()!r}" for t in pending]

    # --- workers ---

    async def start_worker(self, extra_env: Mapping[str, str] | None = None) -> WorkerProc:
        return await self.pool.start(extra_env)

    async def start_workers(
        self, n: int, extra_envs: Sequence[Mapping[str, str]] | None = None
    ) -> list[WorkerProc]:
        started = [await self.start_worker(extra_envs[i] if extra_envs else None) for i in range(n)]
        await self.wait_workers_ready(started)
        return started

    async def wait_workers_ready(self, workers: Sequence[WorkerProc], wait_s: float = 30) -> None:
        await self.pool.wait_ready(self.redis, self.keys, workers, wait_s)

    async def stop_workers(self, grace: float | None = None) -> None:
        await self.pool.stop(
            grace if grace is not None else math.ceil(self.knobs.http_timeout) + 6.0
        )

    # --- locks ---

    async def lock_of(self, cid: str) -> tuple[str, int] | None:
        """(value, ms left) of the in-progress lock of the container's current job, if any."""
        gen = await self.redis.hget(self.keys.result(cid), "generation")  # type: ignore[misc]
        if not gen:
            return None
        key = self.keys.job_lock(self.keys.job_id(cid, gen.decode()))
        async with self.redis.pipeline(transaction=True) as tx:
            tx.get(key)
            tx.pttl(key)
            value, ttl = await tx.execute()
        if value is None:
            return None
        return value.decode("utf-8", "replace"), int(ttl)

    async def holder_of(self, cid: str) -> WorkerProc | None:
        lock = await self.lock_of(cid)
        if lock is None:
            return None
        return next((w for w in self.workers if w.alive and w.holds(lock[0])), None)

    async def held_by(self, worker: WorkerProc) -> dict[str, int]:
        """Containers whose job's lock names ``worker``, with the lock's ms left."""
        out: dict[str, int] = {}
        for cid in self.expect:
            lock = await self.lock_of(cid)
            if lock is not None and worker.holds(lock[0]):
                out[cid] = lock[1]
        return out

    # --- containers ---

    def ids(self, code: str, n: int) -> list[str]:
        return [f"9{code}{i:07d}" for i in range(n)]

    def script(self, ids: Iterable[str], steps: Sequence[str]) -> None:
        for cid in ids:
            self.state.set_script(cid, steps)

    async def enqueue(
        self,
        ids: Sequence[str],
        expect: Expect,
        *,
        account: str | None = None,
        force: bool = False,
        webhook_url: str | None = None,
    ) -> list[str]:
        for cid in ids:
            self.expect[cid] = expect
        outcomes = await retrying(
            lambda: enqueue_many(
                self.redis,
                list(ids),
                account=account,
                force=force,
                webhook_url=webhook_url,
                settings=self.settings,
            )
        )
        now = time.monotonic()
        for cid in ids:
            self.live_from.setdefault(cid, now)
        if self._monitor is None:
            self.start_monitor()
        return [o.outcome for o in outcomes]

    async def xadd(self, ids: Sequence[str], expect: Expect, **fields: str) -> None:
        """Through the intake stream (the poll appears when a worker takes the entry)."""
        for cid in ids:
            self.expect[cid] = expect
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                entry = {"container_id": cid, **fields}
                pipe.xadd(self.keys.intake, cast(Any, entry))
            await pipe.execute()
        if self._monitor is None:
            self.start_monitor()

    def on_first_call(
        self, ids: Iterable[str], action: Callable[[StatusCall], Awaitable[None]]
    ) -> asyncio.Event:
        """Run ``action`` (as a task) at the first status call of any of ``ids``; the event
        is set once it is over."""
        wanted = set(ids)
        done = asyncio.Event()
        fired = False
        loop = self._loop
        assert loop is not None, "inside the harness only"

        async def run(call: StatusCall) -> None:
            try:
                await action(call)
            finally:
                done.set()

        def hook(call: StatusCall) -> None:  # on the simulator's thread
            nonlocal fired
            if fired or call.container_id not in wanted:
                return
            fired = True
            loop.call_soon_threadsafe(self.spawn, run(call))

        self.state.add_status_hook(hook)
        return done

    async def wait_fired(self, event: asyncio.Event, wait_s: float = 60.0) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_s)
        return event.is_set()

    # --- the monitor: is every live poll backed by a live job? ---

    def start_monitor(self, every: float | None = None) -> None:
        self._sample_every = every or (0.1 if len(self.expect) <= 200 else 0.5)
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(BaseException):
                await self._monitor
            self._monitor = None

    async def _monitor_loop(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                await self.sample()
            await asyncio.sleep(self._sample_every)

    async def sample(self) -> None:
        ids = list(self.expect)
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hmget(self.keys.result(cid), ["final", "generation"])
            rows = await pipe.execute()
        now = time.monotonic()
        candidates: list[tuple[str, str]] = []
        for cid, (final, gen) in zip(ids, rows, strict=True):
            if gen is not None:
                self.generation[cid] = gen.decode()
                self.live_from.setdefault(cid, now)
            if final == b"1":
                self.final_since.setdefault(cid, now)
                self.first_final.setdefault(cid, now)
                continue
            self.final_since.pop(cid, None)
            if cid in self.live_from and cid in self.generation:
                candidates.append((cid, self.generation[cid]))
        if not candidates:
            self._stuck_since = None
            return
        async with self.redis.pipeline(transaction=True) as tx:
            for cid, gen in candidates:
                job = self.keys.job_id(cid, gen)
                tx.hmget(self.keys.result(cid), ["final", "generation", "status"])
                tx.exists(self.keys.job_data(job))
                tx.zscore(self.keys.queue, job)
                tx.exists(self.keys.job_lock(job))
            replies = await tx.execute()
        dead = 0
        for i, (cid, gen) in enumerate(candidates):
            (final, now_gen, status), job_key, score, lock = replies[4 * i : 4 * i + 4]
            if now_gen is None:
                reason = "result hash gone"
            elif final == b"1" or now_gen.decode() != gen:
                continue
            elif not job_key:
                reason = "no job key"
            elif score is None and not lock:
                reason = "job neither queued nor running"
            else:
                continue
            dead += 1
            if cid not in self.stranded_seen:
                shown = status.decode() if status else "?"
                self.stranded_seen[cid] = (
                    f"{cid}: {shown}, not final, {reason} "
                    f"(seen at t={time.monotonic() - self.t0:.1f}s)"
                )
        if dead and dead == len(candidates):
            self._stuck_since = self._stuck_since or now
        else:
            self._stuck_since = None

    async def settle(self, give_up: float, *, not_before: float = 0.0) -> str:
        """Wait until every container is final (and ``not_before`` seconds, monotonic, passed),
        until every non-final one has been without a live job for STUCK_SECONDS, or give up."""
        deadline = time.monotonic() + give_up
        if self._monitor is None:
            self.start_monitor()
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            finals = len(self.final_since)
            if finals == len(self.expect) and now >= not_before:
                reason = "all final"
                break
            if self._stuck_since is not None and now - self._stuck_since >= STUCK_SECONDS:
                reason = (
                    f"stopped waiting: {len(self.expect) - finals} not final, none with a live "
                    f"job for {STUCK_SECONDS:g} s"
                )
                break
            if now > deadline:
                reason = f"gave up after {give_up:g} s: {len(self.expect) - finals} not final"
                break
        self.say(f"  [{self.key}] t={time.monotonic() - self.t0:.1f}s {reason}")
        return reason

    # --- accounting ---

    async def collect(self, result: RowResult, settled: str) -> RowResult:
        """Stop the workers and hold every container against what the row expects."""
        result.failures.extend(await self.wait_tasks())
        with contextlib.suppress(RedisError, OSError):
            await self.sample()
        await self.stop_monitor()
        await self.stop_workers()
        ids = list(self.expect)
        hashes: list[dict[str, str]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.result(cid))
            for raw in await pipe.execute():
                hashes.append({k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()})
        self.final_hashes = dict(zip(ids, hashes, strict=True))
        events = per_container(await final_events(self.redis, self.keys.events))
        # After the run (workers stopped): not final and no queued job is stranded.
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid, h in zip(ids, hashes, strict=True):
                job = self.keys.job_id(cid, h.get("generation", ""))
                pipe.exists(self.keys.job_data(job))
                pipe.zscore(self.keys.queue, job)
            flags = await pipe.execute()
        result.settled = settled
        result.containers = len(ids)
        stranded = dict(self.stranded_seen)
        runs_total = 0
        runs_unknown = 0
        for extra in self.extra_runs:
            if extra is None:
                runs_unknown += 1
            else:
                runs_total += extra
        worst: tuple[int, int, int] | None = None  # (calls over the bound, calls, bound)
        for i, (cid, h) in enumerate(zip(ids, hashes, strict=True)):
            exp = self.expect[cid]
            final = h.get("final") == "1"
            status = h.get("status", "no result hash")
            checks = int(h.get("checks") or 0)
            if not final:
                result.lost += 1
                result.details.append(f"lost {cid}: {status}, checks {checks}")
                if not (flags[2 * i] and flags[2 * i + 1] is not None):
                    stranded.setdefault(
                        cid, f"{cid}: {status}, not final, no queued job at the end"
                    )
            elif (
                status == exp.status
                and checks >= exp.min_checks
                and "disappeared" not in h.get("last_error", "")
            ):
                result.right += 1
            else:
                result.details.append(
                    f"wrong {cid}: expected {exp.status} (checks >= {exp.min_checks}), got "
                    f"{status} after {checks} checks; last_error {h.get('last_error', '')!r}"
                )
            n_events = events.get(cid, 0)
            problem = event_problem(n_events, final=final, polls=exp.polls)
            if problem == "duplicate":
                result.duplicate_events += 1
                result.details.append(f"duplicate events {cid}: {n_events} for {exp.polls} poll(s)")
            elif problem == "missing":
                result.missing_events += 1
            calls = self.ledger.of(cid)
            bound = call_bound(
                self.knobs.max_checks, calls, polls=exp.polls, disrupted=self.disrupted[cid]
            )
            result.calls_total += len(calls)
            if len(calls) > bound:
                result.over_bound += 1
                answers = " ".join(c.answer for c in calls)
                result.details.append(f"over bound {cid}: {len(calls)} calls > {bound} ({answers})")
            cand = (max(0, len(calls) - bound), len(calls), bound)
            if worst is None or cand > worst:
                worst = cand
            if "runs" in h and h["runs"].strip().isdigit():
                runs_total += int(h["runs"])
            else:
                runs_unknown += 1
        if worst is not None:
            # The container furthest over its bound, else the one with the most calls.
            result.calls_max, result.bound_at_max = worst[1], worst[2]
        result.stranded = len(stranded)
        result.details += [f"stranded {d}" for d in list(stranded.values())[:5]]
        result.runs = None if runs_unknown else runs_total
        result.runs_unknown = runs_unknown
        if result.lost:
            result.failures.append(f"{result.lost} lost (not final at the end)")
        if result.right + result.lost < result.containers:
            result.failures.append(
                f"{result.containers - result.right - result.lost} final in a wrong state"
            )
        if result.stranded:
            result.failures.append(f"{result.stranded} stranded (not final, no live job)")
        if result.duplicate_events:
            result.failures.append(f"{result.duplicate_events} with duplicate final events")
        if result.missing_events:
            result.failures.append(f"{result.missing_events} final without an event")
        if result.over_bound:
            result.failures.append(f"{result.over_bound} over the call bound")
        ratio = result.runs_per_call
        if ratio is None:
            result.failures.append(
                f"job runs per API call unknown: {runs_unknown} result hash(es) without `runs`"
            )
        elif ratio > MAX_RUNS_PER_CALL:
            result.failures.append(
                f"{ratio:.2f} job runs per API call > {MAX_RUNS_PER_CALL} "
                f"({result.runs} runs, {result.calls_total} calls)"
            )
        result.wall = time.monotonic() - self.t0
        return result

    def timed_out_after_one_check(self) -> int:
        """Containers that ended TIMED_OUT with at most one check (after ``collect``)."""
        return sum(
            1
            for h in self.final_hashes.values()
            if h.get("status") == "TIMED_OUT" and int(h.get("checks") or 0) <= 1
        )

    async def hash_field(self, cid: str, name: str) -> str | None:
        value = await self.redis.hget(self.keys.result(cid), name)  # type: ignore[misc]
        return value.decode() if value is not None else None


# ----- a row --------------------------------------------------------------------------------


RowFn = Callable[[Harness, "RowSpec", int], Awaitable[RowResult]]


@dataclass(frozen=True)
class RowSpec:
    key: str
    number: str
    title: str
    run: RowFn
    n_ci: int
    n_full: int
    knobs: Knobs = Knobs()

    def size(self, scale: Scale) -> int:
        return self.n_ci if scale == "ci" else self.n_full


def new_result(spec: RowSpec) -> RowResult:
    return RowResult(spec.key, spec.number, spec.title)
