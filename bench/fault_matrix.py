"""Never strand a poll: the fault matrix of issue 16.

    .venv/bin/python -m bench.fault_matrix [--rows oom,frozen] [--scale ci|full] [--keep]

Each row is one fault, run against real ``threads-poller worker`` processes (subprocesses,
configured through the environment only), a private redis-server on a free port and the Threads
API simulator (in this process, real HTTP on loopback). The harness is black-box: it counts API
calls on the simulator's side and reads only the documented Redis schema (result hashes, the
events stream, arq's job keys ``arq:job:{prefix}:check:{id}:{generation}``, in-progress locks
``arq:in-progress:<job id>``, the queue ``{prefix}:queue``, account hashes, the intake and
dead-letter streams, the workers' heartbeat set).

Every row asserts, besides what the row is about:

- lost 0: every container is final at the end;
- stranded 0: no container was ever seen (sampled during the run, and once after it) not final
  without a live job: its job key missing, or neither queued nor locked (after the run, with the
  workers stopped: not queued);
- duplicate final events 0: no more events for an id than it had polls;
- API status calls per container (simulator side) within ``call_bound``: max checks per poll
  + 1 per throttled answer + 1 per dropped connection + 1 per run the row killed or stalled;
- job runs per API call <= 1.2: the sum of the result hashes' ``runs`` (claims of the poll's job)
  over the simulator's status calls. A hash without ``runs`` makes the figure unknown, and the
  row fails on it.

The exit code is 0 only when every row passes. ``tests/system/test_fault_matrix.py`` runs every
row at CI size with the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from aiohttp import web
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bench.fault_run import retrying
from bench.harness import (
    RedisServer,
    SimulatorThread,
    environment_without_settings,
    threads_poller_command,
)
from config import Settings, load_settings
from simulator import SimulatorState, StatusCall
from simulator.server import RunningSimulator
from worker.client.producer import enqueue_many

Scale = Literal["ci", "full"]

TOKEN = "fault-matrix-token-not-a-secret"  # noqa: S105 - the simulator's own test token
ACCOUNT = "4200000001"
ACCOUNT_TOKEN = "fault-matrix-account-token"  # noqa: S105
WEBHOOK_SECRET = "fault-matrix-webhook-secret"  # noqa: S105
INTAKE_GROUP = "threads-poller"  # README: the workers' consumer group
DEAD_CONSUMER = "fault-matrix-dead-consumer"
SKEW_ENV = "FAULT_MATRIX_CLOCK_SKEW_SECONDS"

MAX_RUNS_PER_CALL = 1.2
GAP_TOLERANCE_SECONDS = 0.05
# A check scheduled right at deadline + slack starts a poll delay and a claim later.
LATE_CALL_TOLERANCE_SECONDS = 0.3
# Every non-final container without a live job for this long: nothing is left to move them.
STUCK_SECONDS = 3.0
REPO_ROOT = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = f'''"""Clock skew for one process (bench/fault_matrix.py): time.time() and
time.time_ns() run ${SKEW_ENV} seconds off; the monotonic clock, Redis and the simulator keep
real time."""
import os
import time

_skew = float(os.environ.get("{SKEW_ENV}") or 0)
if _skew:
    _real_time, _real_time_ns = time.time, time.time_ns

    def _time() -> float:
        return _real_time() + _skew

    def _time_ns() -> int:
        return _real_time_ns() + int(_skew * 1e9)

    time.time = _time
    time.time_ns = _time_ns
'''.replace("${SKEW_ENV}", SKEW_ENV)


# ----- what a row expects, what the simulator saw ------------------------------------------


@dataclass(frozen=True, slots=True)
class Expect:
    """The final state a container must reach; ``polls``: how many polls of the id the row
    starts (one final event each)."""

    status: str
    min_checks: int = 1
    polls: int = 1


def is_throttled(answer: str) -> bool:
    return answer == "429" or answer.split(":", 1)[0] == "throttle"


class Ledger:
    """Every status call as the simulator saw it (arrival time, account, answer, delay).

    Written from the simulator's thread, read from the harness's: a lock, and copies out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[StatusCall] = []
        self._by_id: dict[str, list[StatusCall]] = {}

    def record(self, call: StatusCall) -> None:
        with self._lock:
            self._calls.append(call)
            self._by_id.setdefault(call.container_id, []).append(call)

    @property
    def calls(self) -> list[StatusCall]:
        with self._lock:
            return list(self._calls)

    def of(self, cid: str) -> list[StatusCall]:
        with self._lock:
            return list(self._by_id.get(cid, ()))

    def answered_between(self, start: float, end: float) -> Counter[str]:
        """Per container: answers sent (arrival + delay) within [start, end]."""
        return Counter(
            c.container_id
            for c in self.calls
            if c.answer != "drop" and start <= c.t + c.delay <= end
        )


def call_bound(
    max_checks: int, calls: Sequence[StatusCall], *, polls: int = 1, disrupted: int = 0
) -> int:
    """The most status calls one container may cost (README "call_bound" of the fault run):
    ``max_checks`` per poll, + 1 per throttled answer (it spends no check), + 1 per dropped
    connection (aiohttp re-sends an idempotent GET once), + 1 per run of it the row killed,
    froze or cut off from Redis (its answer may be lost, and the re-run calls again)."""
    throttled = sum(is_throttled(c.answer) for c in calls)
    dropped = sum(c.answer == "drop" for c in calls)
    return max_checks * polls + throttled + dropped + disrupted


# How late the first paced call may be (so the rest seem early, counted from it): the pacing
# row's tolerance.
PACE_TOLERANCE_S = 1.0


def calls_ahead_of_pace(times: Iterable[float], per_second: float) -> int:
    """The most calls made ahead of ``per_second`` counted from the first one: max over k of
    (k + 1) - (calls due by the k-th call's time at that pace, the first one included)."""
    ts = sorted(times)
    if not ts or per_second <= 0:
        return 0
    return max(k + 1 - (math.floor((t - ts[0]) * per_second) + 1) for k, t in enumerate(ts))


def max_in_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most events within any window of ``width`` seconds."""
    ts = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while t - ts[j] >= width:
            j += 1
        best = max(best, i - j + 1)
    return best


def gaps(times: Sequence[float]) -> list[float]:
    ts = sorted(times)
    return [b - a for a, b in itertools.pairwise(ts)]


def runs_per_call(runs: int | None, calls: int) -> float | None:
    if runs is None or calls <= 0:
        return None
    return runs / calls


# ----- one row's result --------------------------------------------------------------------


@dataclass
class RowResult:
    key: str
    number: str
    title: str
    containers: int = 0
    right: int = 0
    lost: int = 0
    stranded: int = 0
    duplicate_events: int = 0
    missing_events: int = 0
    calls_total: int = 0
    calls_max: int = 0
    bound_at_max: int = 0
    over_bound: int = 0
    runs: int | None = None
    runs_unknown: int = 0
    wall: float = 0.0
    settled: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def runs_per_call(self) -> float | None:
        return runs_per_call(self.runs, self.calls_total)

    @property
    def passed(self) -> bool:
        return not self.failures

    def cells(self) -> list[str]:
        ratio = self.runs_per_call
        return [
            f"{self.number} {self.key}",
            str(self.containers),
            str(self.right),
            str(self.lost),
            str(self.stranded),
            str(self.duplicate_events),
            f"{self.calls_max}/{self.bound_at_max}"
            + (f" ({self.over_bound} over)" if self.over_bound else ""),
            "unknown" if ratio is None else f"{ratio:.2f}",
            f"{self.wall:.1f}",
            "PASS" if self.passed else "FAIL",
        ]

    def render(self) -> str:
        lines = [f"{self.number} {self.key}: {self.title}"]
        lines.append("  " + "  ".join(f"{k} {v}" for k, v in self.figures.items()))
        lines.append(f"  settled: {self.settled}")
        lines += [f"  FAIL: {f}" for f in self.failures]
        lines += [f"    {d}" for d in self.details[:12]]
        if self.workdir is not None:
            lines.append(f"  logs: {self.workdir}")
        return "\n".join(lines)


HEADER = [
    "row",
    "containers",
    "final right",
    "lost",
    "stranded",
    "dup events",
    "calls max/bound",
    "runs/call",
    "wall s",
    "result",
]


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# ----- configuration of the workers ----------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
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


@dataclass
class WorkerProc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def holds(self, lock_value: str) -> bool:
        """True if an in-progress lock value names this process (host:pid:... or host-pid-...)."""
        return re.search(rf"(?<![0-9]){self.pid}(?![0-9])", lock_value) is not None


# ----- the harness ---------------------------------------------------------------------------


class Harness:
    """One row's world: redis-server, simulator, worker processes, a monitor, the accounting."""

    def __init__(self, key: str, knobs: Knobs, workdir: Path, say: Callable[[str], None]) -> None:
        self.key = key
        self.knobs = knobs
        self.workdir = workdir
        self.say = say
        self.prefix = f"fault-matrix-{key}"
        self.ledger = Ledger()
        self.expect: dict[str, Expect] = {}
        self.disrupted: Counter[str] = Counter()
        self.extra_runs: list[int | None] = []  # runs of earlier polls, read before a re-enqueue
        self.workers: list[WorkerProc] = []
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
        self._n_started = 0
        self.t0 = time.monotonic()
        self.redis_server = RedisServer(workdir / "redis", appendonly=True, appendfsync="no")
        self.state = SimulatorState(
            default_script=("notfound",), tokens={TOKEN: "default", ACCOUNT_TOKEN: ACCOUNT}
        )
        self.state.add_status_hook(self.ledger.record)
        self.sim: RunningSimulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.redis: Redis = cast(Redis, None)
        self.chaos: Redis = cast(Redis, None)
        self.settings: Settings = cast(Settings, None)
        self.base_env: dict[str, str] = {}

    # --- keys (README: Redis schema) ---

    def result_key(self, cid: str) -> str:
        return f"{self.prefix}:result:{cid}"

    def job_id(self, cid: str, generation: str) -> str:
        return f"{self.prefix}:check:{cid}:{generation}"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def intake(self) -> str:
        return f"{self.prefix}:intake"

    def account_key(self, account: str) -> str:
        return f"{self.prefix}:account:{account}"

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
        self.base_env = env
        fields = {name.upper(): name for name in Settings.model_fields}
        self.settings = load_settings(
            _env_file=None, **{fields[k]: v for k, v in env.items() if k in fields}
        )
        self._stack.push_async_callback(self._stop_everything)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

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
        self._n_started += 1
        name = f"worker{self._n_started}"
        env = dict(self.base_env)
        env.update(extra_env or {})
        path = self.workdir / "logs" / f"{name}.log"
        with path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *threads_poller_command(),
                "worker",
                env=env,
                cwd=self.workdir,  # no stray .env file
                stdout=log,
                stderr=log,
            )
        worker = WorkerProc(name, proc, path)
        self.workers.append(worker)
        return worker

    async def start_workers(
        self, n: int, extra_envs: Sequence[Mapping[str, str]] | None = None
    ) -> list[WorkerProc]:
        started = [await self.start_worker(extra_envs[i] if extra_envs else None) for i in range(n)]
        await self.wait_workers_ready(started)
        return started

    async def wait_workers_ready(self, workers: Sequence[WorkerProc], wait_s: float = 30) -> None:
        """Until each has beaten once (README: ``{prefix}:workers``, names host-pid-random)."""
        deadline = time.monotonic() + wait_s
        while True:
            names = [
                n.decode() if isinstance(n, bytes) else str(n)
                for n in await self.redis.zrange(f"{self.prefix}:workers", 0, -1)
            ]
            if all(any(w.holds(n) for n in names) for w in workers):
                return
            dead = [w for w in workers if not w.alive]
            if dead or time.monotonic() > deadline:
                tail = dead[0].log.read_text(errors="replace")[-2000:] if dead else ""
                raise RuntimeError(f"worker(s) did not start: {tail}")
            await asyncio.sleep(0.05)

    def stop_signal(self, worker: WorkerProc) -> None:
        worker.proc.send_signal(signal.SIGSTOP)
        worker.stopped = True

    def cont_signal(self, worker: WorkerProc) -> None:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stopped = False

    async def kill(self, worker: WorkerProc) -> None:
        worker.proc.send_signal(signal.SIGKILL)
        await worker.proc.wait()

    async def stop_workers(self, grace: float | None = None) -> None:
        grace = grace if grace is not None else math.ceil(self.knobs.http_timeout) + 6.0
        live = [w for w in self.workers if w.alive]
        for w in live:
            if w.stopped:
                self.cont_signal(w)
            w.proc.send_signal(signal.SIGTERM)
        for w in live:
            try:
                await asyncio.wait_for(w.proc.wait(), grace)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()

    # --- locks ---

    async def lock_of(self, cid: str) -> tuple[str, int] | None:
        """(value, ms left) of the in-progress lock of the container's current job, if any."""
        gen = await self.redis.hget(self.result_key(cid), "generation")  # type: ignore[misc]
        if not gen:
            return None
        key = "arq:in-progress:" + self.job_id(cid, gen.decode())
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
                pipe.xadd(self.intake, cast(Any, entry))
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
                pipe.hmget(self.result_key(cid), ["final", "generation"])
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
                job = self.job_id(cid, gen)
                tx.hmget(self.result_key(cid), ["final", "generation", "status"])
                tx.exists("arq:job:" + job)
                tx.zscore(self.queue, job)
                tx.exists("arq:in-progress:" + job)
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
                pipe.hgetall(self.result_key(cid))
            for raw in await pipe.execute():
                hashes.append({k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()})
        self.final_hashes = dict(zip(ids, hashes, strict=True))
        events = await self.event_counts()
        # After the run (workers stopped): not final and no queued job is stranded.
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid, h in zip(ids, hashes, strict=True):
                job = self.job_id(cid, h.get("generation", ""))
                pipe.exists("arq:job:" + job)
                pipe.zscore(self.queue, job)
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
            if n_events > exp.polls:
                result.duplicate_events += 1
                result.details.append(f"duplicate events {cid}: {n_events} for {exp.polls} poll(s)")
            if final and n_events == 0:
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

    async def event_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for _id, fields in await self.redis.xrange(self.events, "-", "+"):
            counts[fields.get(b"container_id", b"").decode()] += 1
        return counts

    def timed_out_after_one_check(self) -> int:
        """Containers that ended TIMED_OUT with at most one check (after ``collect``)."""
        return sum(
            1
            for h in self.final_hashes.values()
            if h.get("status") == "TIMED_OUT" and int(h.get("checks") or 0) <= 1
        )

    async def hash_field(self, cid: str, name: str) -> str | None:
        value = await self.redis.hget(self.result_key(cid), name)  # type: ignore[misc]
        return value.decode() if value is not None else None


def new_result(spec: RowSpec) -> RowResult:
    return RowResult(spec.key, spec.number, spec.title)


# ----- rows ----------------------------------------------------------------------------------


# After the ~2 s refusal, this many short ones: each starts 5 ms before one container's answer
# goes out and ends as soon as Redis has refused a command (the record of that answer), so
# writes are back while the run that got the answer is still going.
OOM_BLIPS = 6


async def oom_refusals(r: Redis) -> int:
    info = await r.info("errorstats")
    return int(info.get("errorstat_OOM", {}).get("count", 0))


async def row_oom(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Redis refuses writes (maxmemory 1, noeviction) while status answers are in flight, so
    the record of their outcome is refused with OOM. First for ~2 s (n containers at once),
    then in blips around single answers, over as soon as a write was refused."""
    ids = h.ids("01", n)
    blip_ids = h.ids("21", OOM_BLIPS)
    h.script(ids + blip_ids, ["slow:0.5:FINISHED"])
    await h.start_workers(1)
    windows: list[tuple[float, float]] = []
    refused: list[str] = []
    blips_hit = 0

    async def refuse_writes(_call: StatusCall) -> None:
        await asyncio.sleep(0.2)
        await h.chaos.config_set("maxmemory", 1)
        start = time.time()
        try:
            await h.chaos.set(f"{h.prefix}:fault-matrix-probe", "1")
        except ResponseError as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(2.0)
        await h.chaos.config_set("maxmemory", 0)
        windows.append((start, time.time()))

    async def blip(call: StatusCall) -> None:
        nonlocal blips_hit
        await asyncio.sleep(max(0.0, call.t + call.delay - 0.005 - time.time()))
        before = await oom_refusals(h.chaos)
        await h.chaos.config_set("maxmemory", 1)
        start = time.time()
        give_up = time.monotonic() + 0.1
        while time.monotonic() < give_up:
            if await oom_refusals(h.chaos) > before:
                blips_hit += 1
                break
        await h.chaos.config_set("maxmemory", 0)
        windows.append((start, time.time()))

    long_done = h.on_first_call(ids, refuse_writes)
    await h.enqueue(ids, Expect("FINISHED"))
    await h.wait_fired(long_done)
    for cid in blip_ids:
        done = h.on_first_call([cid], blip)
        await h.enqueue([cid], Expect("FINISHED"))
        await h.wait_fired(done, 10)
        await asyncio.sleep(0.3)
    settled = await h.settle(give_up=40)
    hit: Counter[str] = Counter()
    for start, end in windows:
        hit.update(h.ledger.answered_between(start, end))
    h.disrupted.update(hit)
    result = await h.collect(new_result(spec), settled)
    long_s = windows[0][1] - windows[0][0] if windows else 0.0
    result.figures.update(
        {
            "refused s": f"{long_s:.1f}",
            "answers meanwhile": str(sum(hit[c] for c in ids)),
            "blips with a refused write": f"{blips_hit}/{OOM_BLIPS}",
        }
    )
    if not refused or "maxmemory" not in refused[0]:
        result.failures.append(f"invalid run: Redis did not refuse a write ({refused})")
    if not any(hit[c] for c in ids):
        result.failures.append("invalid run: no status answer came back while writes were refused")
    return result


async def row_conn_drop(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Client connections are killed (CLIENT KILL TYPE normal) every ~1 ms from 3 ms before
    each status answer goes out to 12 ms after it, while the outcomes are recorded and the
    checks re-scheduled (connections work again by the time the run is over); SCRIPT FLUSH
    once."""
    ids = h.ids("02", n)
    h.script(ids, ["slow:0.5:IN_PROGRESS", "slow:0.5:FINISHED"])
    await h.start_workers(1)
    windows: list[tuple[float, float]] = []
    killed = 0
    stop = asyncio.Event()

    def note(call: StatusCall) -> None:
        if call.container_id in h.expect:
            sent = call.t + call.delay
            windows.append((sent - 0.003, sent + 0.012))

    h.state.add_status_hook(note)

    async def drop_connections() -> None:
        nonlocal killed
        flushed = False
        while not stop.is_set():
            now = time.time()
            if any(a <= now <= b for a, b in windows):
                if not flushed:
                    await h.chaos.script_flush()
                    flushed = True
                killed += int(await h.chaos.client_kill_filter(_type="normal", skipme=True))
                await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(0.001)

    chaos = h.spawn(drop_connections())
    await h.enqueue(ids, Expect("FINISHED"))
    settled = await h.settle(give_up=40)
    stop.set()
    await chaos
    h.state.remove_status_hook(note)
    for cid in ids:
        h.disrupted[cid] = sum(c.answer != "drop" for c in h.ledger.of(cid))
    result = await h.collect(new_result(spec), settled)
    result.figures.update(
        {"connections killed": str(killed), "answers in kill windows": str(len(windows))}
    )
    if not killed:
        result.failures.append("invalid run: no connection was killed")
    return result


async def row_job_timeout(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """API_MAX_CONCURRENCY=1, JOB_TIMEOUT_SECONDS=2, answers take 0.9 s: most checks wait for
    the one API slot longer than the job timeout."""
    ids = h.ids("03", n)
    h.script(ids, ["slow:0.9:FINISHED"])
    await h.start_workers(1)
    await h.enqueue(ids, Expect("FINISHED", min_checks=1))
    settled = await h.settle(give_up=30 + n)
    result = await h.collect(new_result(spec), settled)
    checked = sum(1 for cid in ids if h.ledger.of(cid))
    result.figures.update(
        {"API_MAX_CONCURRENCY": "1", "answer s": "0.9", "checked": f"{checked}/{n}"}
    )
    return result


async def row_frozen(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Two workers; the one holding a container's lock is SIGSTOPped while its API call is in
    flight, until its locks expire and the other worker re-runs those checks; then SIGCONT."""
    ids = h.ids("04", n)
    # The first answer takes 0.8 s (under HTTP_TIMEOUT_SECONDS): it is sent while the holder
    # is stopped and waits in its socket; the poll is still live when the holder resumes.
    h.script(ids, ["slow:0.8:IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    await h.start_workers(2)
    info: dict[str, Any] = {}

    async def freeze(call: StatusCall) -> None:
        await asyncio.sleep(0.2)
        victim = await h.holder_of(call.container_id)
        if victim is None:
            info["error"] = "no worker holds the lock of the container being checked"
            return
        h.stop_signal(victim)
        stopped_at = time.time()
        # Whatever happens below (a Redis error, a cancel at the row's budget), the victim is
        # resumed: a worker left stopped would hold its locks, and its SIGTERM, forever.
        try:
            frozen = await h.held_by(victim)
            info.update(victim=victim.name, frozen=frozen)
            ttl = max(frozen.values(), default=0) / 1000
            cap = time.monotonic() + ttl + 3.0
            while time.monotonic() < cap:
                rerun = [c for c in frozen if any(x.t > stopped_at for x in h.ledger.of(c))]
                if len(rerun) == len(frozen):
                    break
                await asyncio.sleep(0.05)
            info["rerun"] = [c for c in frozen if any(x.t > stopped_at for x in h.ledger.of(c))]
            await asyncio.sleep(0.3)
        finally:
            h.cont_signal(victim)
        info["frozen_s"] = time.time() - stopped_at
        info["ttl"] = ttl
        info["resumed"] = time.monotonic()

    froze = h.on_first_call(ids[:1], freeze)
    await h.enqueue(ids, Expect("FINISHED"))
    await h.wait_fired(froze)
    settled = await h.settle(give_up=60, not_before=float(info.get("resumed", 0)) + 1.5)
    frozen: dict[str, int] = info.get("frozen", {})
    h.disrupted.update(frozen.keys())
    result = await h.collect(new_result(spec), settled)
    rerun = info.get("rerun", [])
    result.figures.update(
        {
            "frozen containers": str(len(frozen)),
            "re-run while frozen": str(len(rerun)),
            "lock ms left at stop": f"{info.get('ttl', 0) * 1000:.0f}",
            "frozen s": f"{info.get('frozen_s', 0):.1f}",
        }
    )
    if "error" in info or not frozen:
        result.failures.append(f"invalid run: {info.get('error', 'no container was frozen')}")
    elif len(rerun) < len(frozen):
        result.failures.append(
            f"{len(frozen) - len(rerun)} frozen check(s) not re-run by the other worker within "
            "the lock's TTL + 3 s"
        )
    return result


def _clock_of(env: Mapping[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return float(out.stdout.strip()) - time.time()


async def row_clock_skew(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Two workers whose time.time() runs 10 s ahead and 10 s behind (a sitecustomize shim);
    containers come in through the Python API and through the intake stream."""
    ids = h.ids("05", n)
    finishing, forever = ids[0::2], ids[1::2]
    h.script(finishing, ["IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    h.script(forever, ["IN_PROGRESS"])
    shim = h.workdir / "clock-shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    envs = [
        {SKEW_ENV: repr(skew), "PYTHONPATH": f"{shim}{os.pathsep}{REPO_ROOT}"}
        for skew in (10.0, -10.0)
    ]
    measured = [await asyncio.to_thread(_clock_of, {**h.base_env, **e}) for e in envs]
    await h.start_workers(2, envs)
    enqueued_at: dict[str, float] = {}
    api = [cid for i, cid in enumerate(ids) if i % 4 < 2]
    via_intake = [cid for i, cid in enumerate(ids) if i % 4 >= 2]
    for group in (api, via_intake):
        for cid in group:
            expect = Expect("FINISHED", 4) if cid in finishing else Expect("TIMED_OUT", 2)
            enqueued_at[cid] = time.time()
            if group is api:
                await h.enqueue([cid], expect)
            else:
                await h.xadd([cid], expect)
    settled = await h.settle(give_up=30)
    result = await h.collect(new_result(spec), settled)
    interval, end = h.knobs.interval, h.knobs.window + h.knobs.slack + LATE_CALL_TOLERANCE_SECONDS
    all_gaps = [g for cid in ids for g in gaps([c.t for c in h.ledger.of(cid)])]
    short = [g for g in all_gaps if g < interval - GAP_TOLERANCE_SECONDS]
    late = [
        (cid, c.t - enqueued_at[cid])
        for cid in ids
        for c in h.ledger.of(cid)
        if c.t > enqueued_at[cid] + end
    ]
    one_check = h.timed_out_after_one_check()
    result.figures.update(
        {
            "skews s": "/".join(f"{m:+.1f}" for m in measured),
            "min gap s": f"{min(all_gaps):.3f}" if all_gaps else "-",
            "gaps < interval-50ms": str(len(short)),
            "calls past deadline+slack": str(len(late)),
            "TIMED_OUT after 1 check": str(one_check),
        }
    )
    if any(abs(abs(m) - 10.0) > 1.0 for m in measured):
        result.failures.append(f"invalid run: the clock shim did not skew the workers ({measured})")
    if short:
        result.failures.append(
            f"{len(short)} gaps between checks shorter than the interval - 50 ms (min "
            f"{min(short):.3f} s)"
        )
    if late:
        worst = max(late, key=lambda x: x[1])
        result.failures.append(
            f"{len(late)} calls after deadline + slack (worst {worst[0]} at +{worst[1]:.2f} s)"
        )
    if one_check:
        result.failures.append(f"{one_check} TIMED_OUT after 1 check")
    return result


async def row_throttle_storm(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """n containers of one account, checked at once; every first answer is Graph code 4
    (throttled), all of them in flight together."""
    ids = h.ids("06", n)
    h.script(ids, ["FINISHED"])
    h.state.set_account_override(ACCOUNT, "slow:0.4:throttle", times=n)
    await h.start_workers(2)
    levels: list[int] = []
    untils: list[float] = []
    stop = asyncio.Event()

    async def watch_account() -> None:
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                level, until = await h.redis.hmget(  # type: ignore[misc]
                    h.account_key(ACCOUNT), ["throttle_level", "throttled_until"]
                )
                if level is not None:
                    levels.append(int(float(level)))
                if until:
                    untils.append(float(until))
            await asyncio.sleep(0.02)

    watcher = h.spawn(watch_account())
    await h.enqueue(ids, Expect("FINISHED"), account=ACCOUNT)
    settled = await h.settle(give_up=40)
    stop.set()
    await watcher
    result = await h.collect(new_result(spec), settled)
    storm = [c for c in h.ledger.calls if is_throttled(c.answer)]
    first_sent = min((c.t + c.delay for c in storm), default=0.0)
    together = sum(c.t < first_sent for c in storm)
    base = h.knobs.throttle_backoff
    pause = max(untils) - first_sent if untils else 0.0
    max_level = max(levels, default=0)
    result.figures.update(
        {
            "throttled answers": str(len(storm)),
            "in flight together": str(together),
            "max throttle_level": str(max_level),
            "pause s": f"{pause:.2f}",
            "backoff base/max s": f"{base:g}/{h.knobs.throttle_backoff_max:g}",
        }
    )
    if together < 0.9 * n:
        result.failures.append(f"invalid run: only {together} of {n} throttled calls overlapped")
    if max_level != 1:
        result.failures.append(f"throttle_level rose to {max_level} for one episode (expected 1)")
    if not 0.75 * base <= pause <= 1.5 * base:
        result.failures.append(
            f"the account paused {pause:.2f} s (expected ~THROTTLE_BACKOFF_SECONDS {base:g})"
        )
    return result


async def row_pacing(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """n containers of one account enqueued at once, ACCOUNT_MAX_REQUESTS_PER_SECOND=50: the
    account's requests are paced; half answer IN_PROGRESS first."""
    ids = h.ids("07", n)
    h.script(ids[0::2], ["FINISHED"])
    h.script(ids[1::2], ["IN_PROGRESS", "FINISHED"])
    await h.start_workers(2)
    await h.enqueue(ids, Expect("FINISHED"), account=ACCOUNT)
    limit = h.knobs.pace
    settled = await h.settle(give_up=1.5 * n / limit + 30)
    result = await h.collect(new_result(spec), settled)
    times = [c.t for c in h.ledger.calls if c.account == ACCOUNT]
    peak = max_in_window(times)
    ahead = calls_ahead_of_pace(times, limit)
    # Slots are one request each, due one after another at the pace. A call may run late (a
    # loaded machine claims several due slots at once and fires them together, which packs a
    # 1 s window by up to its lateness: 68-76 calls in 1 s at load 2.5-4 on 2 cores), never
    # early. So the k-th call is no sooner than k slots after the first one's slot; counted
    # from the first call (itself late by up to its lateness), at most PACE_TOLERANCE_S of calls
    # ahead. A window's peak only fails the row when gross (twice the pace): the cumulative
    # count is what pacing promises. (Runs do not re-check pacing at call time: README,
    # Configuration.)
    allowed_ahead = limit * PACE_TOLERANCE_S + 1
    gross = 2 * limit + 1
    span = max(times) - min(times) if len(times) > 1 else 0.0
    result.figures.update(
        {
            "limit /s": f"{limit:g}",
            "peak calls in 1 s": str(peak),
            "most calls ahead of the pace": str(ahead),
            "mean /s": f"{len(times) / span:.1f}" if span else "-",
            "TIMED_OUT after 1 check": str(h.timed_out_after_one_check()),
        }
    )
    if ahead > allowed_ahead:
        result.failures.append(
            f"{ahead} calls of the account ahead of {limit:g}/s counted from the first call > "
            f"{allowed_ahead:g} ({PACE_TOLERANCE_S:g} s of lateness of the first call + 1)"
        )
    if peak > gross:
        result.failures.append(
            f"{peak} calls of the account within 1 s > {gross:g} (2 x limit + 1)"
        )
    return result


class WebhookReceiver:
    """A loopback receiver that answers 500 until ``recover()``, then 200; logs every POST."""

    def __init__(self) -> None:
        self.failing = True
        self.deliveries: list[tuple[str, int, float]] = []  # (delivery id, status, time)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def recover(self) -> None:
        self.failing = False

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        status = 500 if self.failing else 200
        delivery = request.headers.get("X-Threads-Poller-Delivery", "")
        self.deliveries.append((delivery, status, time.time()))
        return web.Response(status=status)

    def attempts(self, cid: str, generation: str) -> list[int]:
        suffix = f":{cid}:{generation}"
        return [s for d, s, _ in self.deliveries if d.endswith(suffix)]

    def delivered(self, cid: str, generation: str) -> bool:
        return any(200 <= s < 300 for s in self.attempts(cid, generation))


async def _wait_for(predicate: Callable[[], Awaitable[bool]], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def row_webhook_force(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """A container goes final while its webhook receiver fails (HTTP 500), its delivery waits
    for a retry, and it is re-enqueued with force; then the receiver recovers."""
    ids = h.ids("08", n)
    h.script(ids, ["FINISHED"])
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        return await _webhook_force(h, spec, ids, receiver)
    finally:
        await receiver.stop()


async def _webhook_force(
    h: Harness, spec: RowSpec, ids: list[str], receiver: WebhookReceiver
) -> RowResult:
    await h.start_workers(1)
    await h.enqueue(ids, Expect("FINISHED", polls=2), webhook_url=receiver.url)
    first: dict[str, str] = {}

    async def first_attempted() -> bool:
        for cid in ids:
            if await h.hash_field(cid, "final") == "1":
                first[cid] = await h.hash_field(cid, "generation") or ""
        return len(first) == len(ids) and all(receiver.attempts(c, first[c]) for c in ids)

    ok1 = await _wait_for(first_attempted, 15)
    pending1 = [cid for cid in ids if first.get(cid) and not receiver.delivered(cid, first[cid])]
    for cid in ids:
        runs = await h.hash_field(cid, "runs")
        h.extra_runs.append(int(runs) if runs and runs.isdigit() else None)
    outcomes = await h.enqueue(
        ids, Expect("FINISHED", polls=2), force=True, webhook_url=receiver.url
    )
    second: dict[str, str] = {}

    async def second_attempted() -> bool:
        for cid in ids:
            gen = await h.hash_field(cid, "generation") or ""
            if gen != first.get(cid) and await h.hash_field(cid, "final") == "1":
                second[cid] = gen
        return len(second) == len(ids) and all(receiver.attempts(c, second[c]) for c in ids)

    ok2 = await _wait_for(second_attempted, 15)
    await asyncio.sleep(0.2)
    receiver.recover()

    async def dead_letters() -> Counter[str]:
        counts: Counter[str] = Counter()
        for _id, f in await h.redis.xrange(f"{h.prefix}:webhooks:dead", "-", "+"):
            fields = {k.decode(): v.decode("utf-8", "replace") for k, v in f.items()}
            who = fields.get("container_id", "")
            gen = fields.get("generation") or fields.get("delivery_id", "").rsplit(":", 1)[-1]
            counts[f"{who}:{gen}" if gen else who] += 1
        return counts

    def resolved(cid: str, gen: str, dead: Counter[str]) -> bool:
        return receiver.delivered(cid, gen) or dead[f"{cid}:{gen}"] > 0

    def unresolved(dead: Counter[str]) -> list[tuple[str, str]]:
        # Dead letters without a generation are matched to the generations by count.
        left = []
        spare = Counter({k: v for k, v in dead.items() if ":" not in k})
        for cid in ids:
            for gen in (first.get(cid, ""), second.get(cid, "")):
                if not gen or resolved(cid, gen, dead):
                    continue
                if spare[cid] > 0:
                    spare[cid] -= 1
                    continue
                left.append((cid, gen))
        return left

    async def all_resolved() -> bool:
        return not unresolved(await dead_letters())

    # WEBHOOK_MAX_ATTEMPTS 5 with a 0.3 s back-off doubling: ~4.5 s to the last attempt.
    await _wait_for(all_resolved, 15)
    settled = await h.settle(give_up=10)
    left = unresolved(await dead_letters())
    result = await h.collect(new_result(spec), settled)
    dropped1 = [cid for cid, gen in left if gen == first.get(cid)]
    dropped2 = [cid for cid, gen in left if gen == second.get(cid)]
    made1 = sum(receiver.delivered(c, first[c]) for c in ids if c in first)
    made2 = sum(receiver.delivered(c, second[c]) for c in ids if c in second)
    result.figures.update(
        {
            "gen1 waiting at force": str(len(pending1)),
            "force outcomes": ",".join(sorted(set(outcomes))),
            "gen1 delivered/dead/dropped": f"{made1}/{len(ids) - made1 - len(dropped1)}/"
            f"{len(dropped1)}",
            "gen2 delivered/dead/dropped": f"{made2}/{len(ids) - made2 - len(dropped2)}/"
            f"{len(dropped2)}",
            "POSTs": str(len(receiver.deliveries)),
        }
    )
    if not ok1 or len(pending1) < len(ids):
        result.failures.append("invalid run: not every first delivery was failing at the force")
    if not ok2:
        result.failures.append("the forced polls did not all end with a delivery attempt")
    if dropped1:
        result.failures.append(
            f"{len(dropped1)} first-generation deliveries neither made nor dead-lettered"
        )
    if dropped2:
        result.failures.append(
            f"{len(dropped2)} second-generation deliveries neither made nor dead-lettered"
        )
    return result


class _Died(Exception):
    """The fake consumer dies at its acknowledgement."""


class _DiesAtAck:
    """A Redis client for the intake consumer that dies where it would acknowledge."""

    def __init__(self, real: Redis) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name in ("xack", "xdel", "pipeline", "xautoclaim", "xclaim", "transaction"):
            raise _Died(name)
        return getattr(self._real, name)


async def deliver_and_die(h: Harness, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> str:
    """What a consumer that took ``entries`` did before dying: its own processing up to the
    acknowledgement (``IntakeConsumer.process``); if that wrote no poll, the enqueue the
    consumer does (``parse_entry`` + ``ResultStore.enqueue``)."""
    from worker.client.producer import store_for
    from worker.runtime.intake import IntakeConsumer, parse_entry

    store = store_for(h.redis, h.settings)
    with contextlib.suppress(_Died):
        consumer = IntakeConsumer(
            cast(Redis, _DiesAtAck(h.redis)),
            store,
            consumer=DEAD_CONSUMER,
            batch_size=100,
            claim_idle_seconds=h.knobs.claim_idle,
            max_entry_bytes=h.settings.intake_max_entry_bytes,
        )
        await consumer.process(entries)
    ids = [e[1][b"container_id"].decode() for e in entries]
    if all([await h.hash_field(cid, "generation") for cid in ids]):
        return "IntakeConsumer.process up to its XACK"
    await store.enqueue([parse_entry(f, max_bytes=4096) for _, f in entries])
    return "parse_entry + ResultStore.enqueue"


async def row_intake_replay(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """An intake entry with force 1 is delivered twice: a consumer enqueued it and died before
    its XACK; a live worker takes the entry over after INTAKE_CLAIM_IDLE_SECONDS."""
    ids = h.ids("09", n)
    h.script(ids, ["FINISHED"])
    with contextlib.suppress(ResponseError):
        await h.redis.xgroup_create(h.intake, INTAKE_GROUP, id="0", mkstream=True)
    for cid in ids:
        h.expect[cid] = Expect("FINISHED")
        await h.redis.xadd(h.intake, {"container_id": cid, "force": "1"})
    reply = await h.redis.xreadgroup(INTAKE_GROUP, DEAD_CONSUMER, {h.intake: ">"}, count=len(ids))
    entries: list[tuple[bytes, dict[bytes, bytes]]] = [e for _s, batch in reply for e in batch]
    how = await deliver_and_die(h, entries)
    gen0 = {cid: await h.hash_field(cid, "generation") or "" for cid in ids}
    for cid in ids:
        h.live_from[cid] = time.monotonic()
    h.start_monitor()
    await h.start_workers(1)
    # The dead consumer's entries become claimable INTAKE_CLAIM_IDLE_SECONDS from now.
    await h.redis.xclaim(
        h.intake, INTAKE_GROUP, DEAD_CONSUMER, 0, [e[0] for e in entries], justid=True
    )
    acked_at: float | None = None

    async def acked() -> bool:
        nonlocal acked_at
        summary = await h.redis.xpending(h.intake, INTAKE_GROUP)
        if int(summary["pending"]) == 0:
            acked_at = time.monotonic()
            return True
        return False

    await _wait_for(acked, h.knobs.claim_idle + 15)
    first_final = {cid: h.first_final.get(cid) for cid in ids}
    await asyncio.sleep(0.3)
    settled = await h.settle(give_up=15, not_before=time.monotonic() + 1.0)
    pending = int((await h.redis.xpending(h.intake, INTAKE_GROUP))["pending"])
    gens = {cid: await h.hash_field(cid, "generation") or "" for cid in ids}
    result = await h.collect(new_result(spec), settled)
    polled_twice = [cid for cid in ids if gens[cid] != gen0[cid]]
    early = [cid for cid, t in first_final.items() if t is None or acked_at is None or t > acked_at]
    result.figures.update(
        {
            "first delivery": how,
            "replays taken over": str(len(ids) if acked_at is not None else 0),
            "polls": str(len(ids) + len(polled_twice)),
            "intake pending": str(pending),
        }
    )
    if acked_at is None or pending:
        result.failures.append("the replayed entries were not taken over and acknowledged")
    elif early:
        result.failures.append(
            f"invalid run: {len(early)} replay(s) came before the first poll was final"
        )
    if polled_twice:
        result.failures.append(f"{len(polled_twice)} container(s) polled twice for one entry")
    return result


async def row_notfound_once(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """The API answers code 100 / subcode 33 (does not exist) once, then FINISHED."""
    ids = h.ids("10", n)
    h.script(ids, ["notfound", "FINISHED"])
    await h.start_workers(1)
    await h.enqueue(ids, Expect("FINISHED"))
    settled = await h.settle(give_up=20)
    result = await h.collect(new_result(spec), settled)
    failed = sum(1 for d in result.details if "got FAILED" in d)
    result.figures.update({"FAILED": str(failed)})
    return result


async def row_sigkill(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """For comparison: the worker holding a container's lock is SIGKILLed mid-check and a
    new worker is started in its place."""
    ids = h.ids("11", n)
    h.script(ids, ["slow:0.6:FINISHED"])
    await h.start_workers(2)
    info: dict[str, Any] = {}

    async def kill(call: StatusCall) -> None:
        await asyncio.sleep(0.3)
        victim = await h.holder_of(call.container_id)
        if victim is None:
            info["error"] = "no worker holds the lock of the container being checked"
            return
        info["killed"] = await h.held_by(victim)
        await h.kill(victim)
        await h.wait_workers_ready([await h.start_worker()])

    killed_one = h.on_first_call(ids[:1], kill)
    await h.enqueue(ids, Expect("FINISHED"))
    await h.wait_fired(killed_one)
    settled = await h.settle(give_up=60)
    killed: dict[str, int] = info.get("killed", {})
    h.disrupted.update(killed.keys())
    result = await h.collect(new_result(spec), settled)
    result.figures.update({"runs killed": str(len(killed))})
    if "error" in info or not killed:
        result.failures.append(f"invalid run: {info.get('error', 'no run was killed')}")
    return result


# ----- the matrix ----------------------------------------------------------------------------


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


LONG_WINDOW = Knobs(window=20.0)
# Every container's check in flight at once, at the full size too (no queueing for job slots).
ALL_AT_ONCE = Knobs(max_jobs=250, api_concurrency=250)

ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        "oom",
        "1",
        "Redis refuses writes (OOM) while answers are in flight",
        row_oom,
        20,
        200,
        ALL_AT_ONCE,
    ),
    RowSpec(
        "conn_drop",
        "2",
        "connections killed (CLIENT KILL) while outcomes are recorded",
        row_conn_drop,
        40,
        200,
        ALL_AT_ONCE,
    ),
    RowSpec(
        "job_timeout",
        "3",
        "checks queue for the one API slot past JOB_TIMEOUT_SECONDS",
        row_job_timeout,
        8,
        16,
        Knobs(api_concurrency=1, job_timeout=2.0, http_timeout=1.0),
    ),
    RowSpec(
        "frozen",
        "4",
        "worker SIGSTOPped past its lock, then SIGCONT",
        row_frozen,
        4,
        20,
        LONG_WINDOW,
    ),
    RowSpec("clock_skew", "5", "two workers, clocks +10 s and -10 s", row_clock_skew, 20, 100),
    RowSpec(
        "throttle_storm",
        "6",
        "one account: every first answer throttled, all in flight at once",
        row_throttle_storm,
        50,
        200,
        Knobs(throttle_backoff=1.0, throttle_backoff_max=8.0, max_jobs=250, api_concurrency=250),
    ),
    RowSpec(
        "pacing",
        "7",
        "a burst of one account under ACCOUNT_MAX_REQUESTS_PER_SECOND=50",
        row_pacing,
        200,
        1000,
        Knobs(pace=50.0, max_jobs=200),
    ),
    RowSpec(
        "webhook_force",
        "8",
        "forced re-enqueue while a webhook delivery waits for its retry",
        row_webhook_force,
        3,
        10,
        Knobs(
            webhook_timeout=1.0,
            extra=(
                ("WEBHOOK_SECRET", WEBHOOK_SECRET),
                ("WEBHOOK_BACKOFF_SECONDS", "0.3"),
                ("WEBHOOK_MAX_ATTEMPTS", "5"),
                # The receiver is on loopback: the SSRF guard refuses it unless allowed.
                ("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1"),
            ),
        ),
    ),
    RowSpec(
        "intake_replay",
        "9",
        "an intake entry with force 1 delivered twice",
        row_intake_replay,
        3,
        10,
        Knobs(claim_idle=3.0),
    ),
    RowSpec("notfound_once", "10", "code 100/33 once, then FINISHED", row_notfound_once, 10, 50),
    RowSpec(
        "sigkill",
        "11",
        "worker SIGKILLed mid-check (comparison)",
        row_sigkill,
        6,
        20,
        LONG_WINDOW,
    ),
)
BY_KEY = {r.key: r for r in ROWS} | {r.number: r for r in ROWS}


# Generous: the slowest CI row takes about 60 s on a 2-core machine, the slowest full row ~5 min.
ROW_BUDGET_S: dict[Scale, float] = {"ci": 300.0, "full": 1800.0}


async def run_row(
    key: str,
    *,
    scale: Scale = "ci",
    workdir: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> RowResult:
    spec = BY_KEY[key]
    own_dir = workdir is None
    root = workdir or Path(tempfile.mkdtemp(prefix=f"fault-matrix-{spec.key}-"))
    say(f"  [{spec.key}] {spec.title} ({spec.size(scale)} containers; work dir {root})")
    budget = ROW_BUDGET_S[scale]
    async with Harness(spec.key, spec.knobs, root, say) as h:
        try:
            # One bound over the whole row: a hang anywhere (a hook, a stopped worker, a
            # socket) ends as a failed row with its log, not as a CI job that never returns.
            result = await asyncio.wait_for(spec.run(h, spec, spec.size(scale)), budget)
        except Exception as exc:
            result = new_result(spec)
            what = f"row over its {budget:g} s budget" if isinstance(exc, TimeoutError) else ""
            result.failures.append(f"harness error: {what or type(exc).__name__}: {exc}")
            result.wall = time.monotonic() - h.t0
    result.workdir = root
    if result.passed and own_dir and not keep:
        shutil.rmtree(root, ignore_errors=True)
        result.workdir = None
    return result


async def run_matrix(
    keys: Sequence[str], *, scale: Scale, keep: bool, say: Callable[[str], None]
) -> list[RowResult]:
    results = []
    for key in keys:
        results.append(await run_row(key, scale=scale, keep=keep, say=say))
    return results


def render(results: Sequence[RowResult]) -> str:
    lines = ["", table([HEADER] + [r.cells() for r in results]), ""]
    for r in results:
        lines.append(r.render())
    passed = all(r.passed for r in results)
    lines.append("")
    lines.append(
        "PASS" if passed else f"FAIL ({sum(not r.passed for r in results)} of {len(results)} rows)"
    )
    return "\n".join(lines)


def parse_rows(text: str | None) -> list[str]:
    if not text:
        return [r.key for r in ROWS]
    keys = []
    for item in text.split(","):
        item = item.strip()
        if item not in BY_KEY:
            known = ", ".join(f"{r.number}|{r.key}" for r in ROWS)
            raise SystemExit(f"fault_matrix: unknown row {item!r}; known: {known}")
        keys.append(BY_KEY[item].key)
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.fault_matrix",
        description="Never strand a poll: one fault per row, real workers, real Redis.",
    )
    p.add_argument("--rows", help="comma-separated row names or numbers (default: all)")
    p.add_argument("--scale", choices=["ci", "full"], default="ci")
    p.add_argument("--keep", action="store_true", help="keep every row's logs (failed: always)")
    args = p.parse_args(argv)
    keys = parse_rows(args.rows)

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"threads-poller fault matrix, scale {args.scale}: {', '.join(keys)}")
    try:
        results = asyncio.run(run_matrix(keys, scale=args.scale, keep=args.keep, say=say))
    except KeyboardInterrupt:
        return 130
    say(render(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
