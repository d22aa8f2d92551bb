"""Nothing is lost: a crash, restart and fault-injection run that ends in figures.

    .venv/bin/python -m bench.fault_run [--containers N] [--workers 3] [--kill-every S]
        [--fault-rate 0.2] [--interval S] [--window S] [--seed N] [--rate N/s] ...

N containers with scripted outcomes (the id says which script, so each container has one known
expected final state) are polled through the Threads API simulator, which answers a share of all
status calls with a random fault, by several ``threads-poller worker`` processes on one private
redis-server with AOF on. Every few seconds one worker is SIGKILLed and started again; Redis itself
is SIGKILLed once mid-run and restarted on the same port and directory (the AOF is replayed).
Containers go in at a steady rate, some through the Python API and some through the intake stream.

At the end every container's result hash, the events stream, the simulator's call log and the
workers' logs are held against what each script asked for. The exit code is 0 only when nothing
was lost, nothing was wrong, no final event was duplicated or missing and no container saw more
status calls than the documented bound (see ``call_bound``). The README's section "Nothing is
lost: fault run" explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bench.harness import (
    RedisServer,
    environment_without_settings,
    simulator_in_process,
    threads_poller_command,
)
from config import Settings, load_settings
from simulator import DEFAULT_FAULT_KINDS, SimulatorState
from simulator.state import Reply
from simulator.steps import DropStep, GraphErrorStep, RawStep, StatusStep
from worker.client.producer import enqueue_many
from worker.core.decisions import Schedule
from worker.core.result import PollResult
from worker.store.keys import INTAKE_GROUP, Keys

T = TypeVar("T")

TOKEN = "fault-run-token-not-a-secret"  # noqa: S105 - the simulator takes any token
KEY_PREFIX = "threads-poller-fault-run"
ACCOUNT_BASE = 910_000_000_000
THROTTLE_LABELS = frozenset({"throttle", "429"})


# ----- scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scripted story; ``code`` is the id prefix that selects it in the simulator."""

    name: str
    code: str
    steps: tuple[str, ...]
    expect: str
    error_message: str | None = None
    error_kind: str | None = None
    weight: int = 1

    @property
    def prefix(self) -> str:
        return "7" + self.code

    @property
    def expect_label(self) -> str:
        return f"{self.expect}:{self.error_message}" if self.error_message else self.expect

    @property
    def decisive_label(self) -> str | None:
        """The simulator's label of the answer that settles the container (None: none does)."""
        return None if self.expect == "TIMED_OUT" else self.steps[-1]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("finished", "01", ("FINISHED",), "FINISHED", weight=4),
    Scenario("finished_2nd", "02", ("IN_PROGRESS", "FINISHED"), "FINISHED", weight=2),
    Scenario(
        "error",
        "03",
        ("ERROR:FAILED_DOWNLOADING_VIDEO",),
        "ERROR",
        error_message="FAILED_DOWNLOADING_VIDEO",
        weight=2,
    ),
    Scenario(
        "error_2nd",
        "04",
        ("IN_PROGRESS", "ERROR:INVALID_ASPEC_RATIO"),
        "ERROR",
        error_message="INVALID_ASPEC_RATIO",
    ),
    Scenario(
        "error_new_reason",
        "05",
        ("ERROR:SOMETHING_META_ADDED_LATER",),
        "ERROR",
        error_message="SOMETHING_META_ADDED_LATER",
    ),
    Scenario("expired", "06", ("EXPIRED",), "EXPIRED", weight=2),
    Scenario("published", "07", ("PUBLISHED",), "PUBLISHED"),
    Scenario("published_2nd", "08", ("IN_PROGRESS", "PUBLISHED"), "PUBLISHED"),
    Scenario("in_progress_forever", "09", ("IN_PROGRESS",), "TIMED_OUT", weight=2),
    Scenario("unknown_status_forever", "10", ("STATUS:SCHEDULED",), "TIMED_OUT"),
    Scenario("notfound", "11", ("notfound",), "FAILED", error_kind="not_found", weight=2),
    Scenario("permission", "12", ("permission",), "FAILED", error_kind="permission"),
)
_CYCLE: tuple[Scenario, ...] = tuple(sc for sc in SCENARIOS for _ in range(sc.weight))
_BY_CODE = {sc.code: sc for sc in SCENARIOS}


def scenario_of_index(i: int) -> Scenario:
    """A deterministic mix: the weighted cycle of SCENARIOS, in order."""
    return _CYCLE[i % len(_CYCLE)]


def container_id(i: int) -> str:
    return f"{scenario_of_index(i).prefix}{i:010d}"


def scenario_of(cid: str) -> Scenario:
    return _BY_CODE[cid[1:3]]


def account_of(i: int, accounts: int) -> str | None:
    # Interleaved. (Blocks of one account enqueued together stay in lockstep: one throttled
    # answer then postpones all its siblings by an interval, again and again.)
    return str(ACCOUNT_BASE + i % accounts) if accounts > 0 else None


def via_intake(i: int, share: float) -> bool:
    return math.floor((i + 1) * share) > math.floor(i * share)


# ----- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRunConfig:
    containers: int = 10_000
    workers: int = 3
    kill_every: float = 5.0
    fault_rate: float = 0.2
    interval: float = 10.0
    window: float = 50.0
    seed: int = 1
    rate: float = 100.0
    intake_share: float = 0.25
    accounts: int = 20
    http_timeout: float = 1.0
    job_timeout: float = 2.0
    max_jobs: int = 50
    throttle_backoff: float = 0.1
    redis_restart_at: float | None = None  # seconds after the start; None: mid-enqueue; <0: none
    appendfsync: str = "always"
    progress_every: float = 5.0
    workdir: Path | None = None
    keep: bool = False

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.interval, self.window)

    @property
    def max_checks(self) -> int:
        return self.schedule.max_checks

    @property
    def slow_seconds(self) -> float:
        # A random "slow" answer must be a timeout for the worker, by a clear margin.
        return 2.0 * self.http_timeout

    @property
    def throttle_max_delay(self) -> float:
        # Production: 900 s for a 300 s window; the same ratio here.
        return 3 * self.window

    @property
    def enqueue_seconds(self) -> float:
        return self.containers / self.rate

    @property
    def redis_restart_time(self) -> float | None:
        if self.redis_restart_at is None:
            return max(1.0, self.enqueue_seconds / 2)
        return self.redis_restart_at if self.redis_restart_at >= 0 else None

    @property
    def reconcile_grace(self) -> float:
        # worker.runtime.app: a poll whose job vanished is settled after deadline + this.
        return self.job_timeout + self.interval + 30.0

    def describe(self, rerun_after_kill: float) -> str:
        restart = self.redis_restart_time
        return "\n".join(
            [
                f"  containers {self.containers} at {self.rate:g}/s "
                f"({self.intake_share:.0%} through the intake stream), {self.accounts} accounts,"
                f" seed {self.seed}",
                f"  workers {self.workers} (WORKER_MAX_JOBS {self.max_jobs}), one SIGKILLed and "
                + (f"restarted every {self.kill_every:g} s" if self.kill_every > 0 else "never"),
                f"  schedule: a check every {self.interval:g} s for {self.window:g} s "
                f"(at most {self.max_checks} checks)",
                f"  faults: {self.fault_rate:.0%} of status calls, kinds "
                f"{','.join(DEFAULT_FAULT_KINDS)}; slow = {self.slow_seconds:g} s "
                f"> HTTP_TIMEOUT_SECONDS {self.http_timeout:g}",
                f"  JOB_TIMEOUT_SECONDS {self.job_timeout:g}; a SIGKILLed check runs again after "
                f"{rerun_after_kill:g} s at most (LEASE_SECONDS: renewed while a run works)",
                f"  throttling: THROTTLE_BACKOFF_SECONDS {self.throttle_backoff:g}, "
                f"THROTTLE_MAX_DELAY_SECONDS {self.throttle_max_delay:g}, pacing off",
                f"  redis: appendonly yes, appendfsync {self.appendfsync}, SIGKILLed and restarted "
                + (f"at t={restart:g} s" if restart is not None else "never"),
            ]
        )


# ----- the simulator, with a ledger of what each call was answered -----------------------


@dataclass(frozen=True, slots=True)
class Answer:
    label: str
    delay: float


def _label(reply: Reply) -> str:
    outcome = reply.outcome
    if isinstance(outcome, StatusStep | GraphErrorStep | RawStep | DropStep):
        return outcome.label
    return type(outcome).__name__


class LedgerState(SimulatorState):
    """The simulator's state plus, per container, every answer and how late it was sent.

    The simulator's own log records a random "slow" fault under the status it delays; the ledger
    keeps the delay, so that "the API said FINISHED" means "said it in time for the client".
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger: defaultdict[str, list[Answer]] = defaultdict(list)

    def handle_status(self, container_id: str, token: str | None) -> Reply:
        reply = super().handle_status(container_id, token)
        self.ledger[container_id].append(Answer(_label(reply), reply.delay))
        return reply


def starved_probability(
    steps: Sequence[str], *, fault_rate: float, kinds: Sequence[str], checks: int
) -> float:
    """Model: the chance that no check of a container ever sees its decisive answer.

    Random faults are independent per call. A throttled answer does not spend a check; a dropped
    connection is re-sent once by aiohttp within the same check; a slow answer is a timeout but
    moves the script on; other faults spend the check. Kills and restarts are left out.
    """
    if not kinds or fault_rate <= 0:
        return 0.0
    share = fault_rate / len(kinds)
    p_slow = share * sum(k == "slow" for k in kinds)
    p_drop = share * sum(k == "drop" for k in kinds)
    p_thr = share * sum(k in THROTTLE_LABELS for k in kinds)
    p_ok = 1.0 - fault_rate
    deliver = p_ok + p_drop * p_ok
    consume = p_slow + p_drop * p_slow
    not_spent = p_thr + p_drop * p_thr
    spent = 1.0 - not_spent
    deliver, consume = deliver / spent, consume / spent
    fail = 1.0 - deliver - consume
    last = len(steps) - 1
    mass = [0.0] * (last + 1)
    mass[0] = 1.0
    for _ in range(checks):
        nxt = [0.0] * (last + 1)
        for cursor, p in enumerate(mass):
            if cursor < last:
                nxt[cursor + 1] += p * (deliver + consume)
            else:
                nxt[cursor] += p * consume  # delivery at the last step ends the story
            nxt[cursor] += p * fail
        mass = nxt
    return sum(mass)


# ----- processes ---------------------------------------------------------------------------


def rerun_after_kill(settings: Settings) -> float:
    """How long a SIGKILLed check waits to run again at most: its run's lease, as last renewed
    (worker.runtime.app)."""
    from worker.runtime.app import lease_seconds

    return lease_seconds(settings)


def worker_env(cfg: FaultRunConfig, redis_url: str, api_base_url: str) -> dict[str, str]:
    # Nothing from the caller's environment may change the run: drop every service setting.
    env = environment_without_settings()
    env.update(
        REDIS_URL=redis_url,
        THREADS_API_BASE_URL=api_base_url,
        THREADS_ACCESS_TOKEN=TOKEN,
        POLL_INTERVAL_SECONDS=repr(cfg.interval),
        POLL_MAX_SECONDS=repr(cfg.window),
        HTTP_TIMEOUT_SECONDS=repr(cfg.http_timeout),
        JOB_TIMEOUT_SECONDS=repr(cfg.job_timeout),
        WORKER_MAX_JOBS=str(cfg.max_jobs),
        LOG_FORMAT="json",
        # DEBUG: the run accounting below reads every check's "checked" line.
        LOG_LEVEL="DEBUG",
        KEY_PREFIX=KEY_PREFIX,
        EVENTS_MAX_LEN=str(max(100_000, 3 * cfg.containers)),
        INTAKE_CLAIM_IDLE_SECONDS="5",
        # The run is about faults and crashes, not about pacing towards Meta: no request pacing,
        # and a throttled answer pauses its account only briefly (one account gets ~0.5
        # throttling faults a second here, far beyond anything the real API would send).
        ACCOUNT_MAX_REQUESTS_PER_SECOND="0",
        THROTTLE_BACKOFF_SECONDS=repr(cfg.throttle_backoff),
        THROTTLE_BACKOFF_MAX_SECONDS=repr(max(cfg.throttle_backoff, 10 * cfg.throttle_backoff)),
        THROTTLE_MAX_DELAY_SECONDS=repr(cfg.throttle_max_delay),
        METRICS_PORT="0",
    )
    return env


class WorkerPool:
    """N worker processes in slots; a slot whose process is killed or dies is started again."""

    def __init__(self, n: int, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[asyncio.subprocess.Process | None] = [None] * n
        self.starts = [0] * n
        self.kills = 0
        self.unexpected_exits: list[tuple[int, int]] = []  # (slot, exit code)
        self.logs: list[Path] = []

    async def start(self, slot: int) -> None:
        self.starts[slot] += 1
        path = self.logdir / f"worker{slot}-{self.starts[slot]}.log"
        self.logs.append(path)
        with path.open("wb") as log:
            self.procs[slot] = await asyncio.create_subprocess_exec(
                *threads_poller_command(),
                "worker",
                env=self.env,
                cwd=self.logdir,  # no stray .env file can be read
                stdout=log,
                stderr=log,
            )

    async def start_all(self) -> None:
        for slot in range(len(self.procs)):
            await self.start(slot)

    async def kill_and_restart(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            self.kills += 1
        await self.start(slot)

    async def reap(self) -> None:
        """Restart any worker that exited on its own (as a supervisor would), and count it."""
        for slot, proc in enumerate(self.procs):
            if proc is not None and proc.returncode is not None:
                self.unexpected_exits.append((slot, proc.returncode))
                await self.start(slot)

    async def stop(self, grace: float) -> None:
        live = [p for p in self.procs if p is not None and p.returncode is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def retrying(fn: Callable[[], Awaitable[T]], *, seconds: float = 60.0) -> T:
    """Redis calls of the producer and the monitor ride out the Redis restart."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # BusyLoadingError (Redis replaying its AOF) is a ConnectionError too.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# ----- the run -----------------------------------------------------------------------------


@dataclass
class Progress:
    enqueued: int = 0
    intake_written: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    done_at: float | None = None


async def produce(
    redis: Redis, settings: Settings, cfg: FaultRunConfig, keys: Keys, progress: Progress
) -> None:
    """Feed the containers at ``cfg.rate`` a second, in batches every 0.1 s."""
    per_batch = max(1, round(cfg.rate / 10))
    t0 = time.monotonic()
    for start in range(0, cfg.containers, per_batch):
        idx = range(start, min(start + per_batch, cfg.containers))
        by_account: dict[str | None, list[str]] = defaultdict(list)
        intake: list[dict[str, str]] = []
        for i in idx:
            acct = account_of(i, cfg.accounts)
            if via_intake(i, cfg.intake_share):
                entry = {"container_id": container_id(i)}
                if acct is not None:
                    entry["account"] = acct
                intake.append(entry)
            else:
                by_account[acct].append(container_id(i))
        for acct, ids in by_account.items():
            # Idempotent: a batch repeated after a lost reply reports "duplicate", nothing else.
            outcomes = await retrying(
                functools.partial(enqueue_many, redis, ids, account=acct, settings=settings)
            )
            progress.outcomes.update(o.outcome for o in outcomes)
        if intake:

            async def xadd_all(entries: list[dict[str, str]] = intake) -> None:
                async with redis.pipeline(transaction=False) as pipe:
                    for entry in entries:
                        pipe.xadd(keys.intake, entry)  # type: ignore[arg-type]
                    await pipe.execute()

            await retrying(xadd_all)
            progress.intake_written += len(intake)
        progress.enqueued = idx.stop
        pause = t0 + idx.stop / cfg.rate - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
    progress.done_at = time.monotonic()


async def chaos(
    cfg: FaultRunConfig,
    pool: WorkerPool,
    redis_server: RedisServer,
    t0: float,
    stop: asyncio.Event,
    say: Callable[[str], None],
) -> None:
    rng = random.Random(cfg.seed)
    next_kill = t0 + cfg.kill_every if cfg.kill_every > 0 else math.inf
    restart_at = cfg.redis_restart_time
    while not stop.is_set():
        now = time.monotonic()
        if restart_at is not None and now - t0 >= restart_at and redis_server.restarts == 0:
            took = await redis_server.crash_and_restart()
            say(f"  t={now - t0:5.0f}s  redis-server SIGKILLed and restarted (down {took:.2f} s)")
        if now >= next_kill:
            await pool.kill_and_restart(rng.randrange(len(pool.procs)))
            next_kill += cfg.kill_every
        await pool.reap()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _all_final(redis: Redis, keys: Keys, ids: Sequence[str]) -> bool:
    for start in range(0, len(ids), 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for cid in ids[start : start + 2000]:
                pipe.hget(keys.result(cid), "final")
            flags = await pipe.execute()
        if any(f != b"1" for f in flags):
            return False
    return True


async def run_fault_run(
    cfg: FaultRunConfig, *, say: Callable[[str], None] = print
) -> FaultRunReport:
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="threads-poller-fault-run-"))
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    t_wall = time.monotonic()
    # AOF on: crash_and_restart (SIGKILL, same port and directory) replays it.
    redis_server = RedisServer(workdir / "redis", appendonly=True, appendfsync=cfg.appendfsync)
    await redis_server.astart(wait_s=30)
    state = LedgerState(
        default_script=("notfound",),
        fault_rate=cfg.fault_rate,
        fault_kinds=DEFAULT_FAULT_KINDS,
        slow_seconds=cfg.slow_seconds,
        seed=cfg.seed,
    )
    for sc in SCENARIOS:
        state.set_script(sc.prefix + "*", sc.steps)
    keys = Keys(KEY_PREFIX)
    ids = [container_id(i) for i in range(cfg.containers)]
    progress = Progress()
    try:
        async with simulator_in_process(state) as sim:
            env = worker_env(cfg, redis_server.url, sim.base_url)
            # The workers' settings exactly (for the enqueue window and the kill re-run delay).
            fields = {name.upper(): name for name in Settings.model_fields}
            settings = load_settings(
                _env_file=None, **{fields[k]: v for k, v in env.items() if k in fields}
            )
            rerun = rerun_after_kill(settings)
            say("threads-poller fault run\n" + cfg.describe(rerun))
            say(f"  work directory: {workdir}")
            pool = WorkerPool(cfg.workers, env, logdir)
            redis = Redis.from_url(redis_server.url, socket_timeout=10, socket_connect_timeout=2)
            stop_chaos = asyncio.Event()
            try:
                await pool.start_all()
                t0 = time.monotonic()
                producer = asyncio.create_task(produce(redis, settings, cfg, keys, progress))
                chaos_task = asyncio.create_task(
                    chaos(cfg, pool, redis_server, t0, stop_chaos, say)
                )
                finished = await _watch(
                    cfg,
                    redis,
                    keys,
                    ids,
                    progress,
                    pool,
                    redis_server,
                    state,
                    t0,
                    producer,
                    stop_chaos,
                    rerun,
                    say,
                )
                stop_chaos.set()
                await chaos_task
                await producer
                await pool.stop(grace=cfg.http_timeout + 10)
                say(
                    "all containers final; workers stopped"
                    if finished
                    else "gave up waiting; workers stopped"
                )
                report = await account(
                    cfg, redis, keys, ids, state, pool, redis_server, progress, workdir
                )
            finally:
                stop_chaos.set()
                await pool.stop(grace=5)
                await redis.aclose()
    finally:
        await redis_server.astop()
    report.wall_time = time.monotonic() - t_wall
    if report.passed and not cfg.keep and cfg.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
        report.workdir = None
    return report


async def _watch(
    cfg: FaultRunConfig,
    redis: Redis,
    keys: Keys,
    ids: Sequence[str],
    progress: Progress,
    pool: WorkerPool,
    redis_server: RedisServer,
    state: LedgerState,
    t0: float,
    producer: asyncio.Task[None],
    stop_chaos: asyncio.Event,
    rerun_after_kill: float,
    say: Callable[[str], None],
) -> bool:
    """Print progress until every container is final (True) or the run gives up (False)."""
    give_up_after = (
        cfg.window + cfg.throttle_max_delay + rerun_after_kill + cfg.reconcile_grace + 30.0
    )
    next_print = t0
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        failure = producer.exception() if producer.done() else None
        if failure is not None:
            raise failure
        try:
            events = int(await retrying(lambda: redis.xlen(keys.events), seconds=5))
            inflight = int(await retrying(lambda: redis.zcard(keys.inflight), seconds=5))
        except (RedisError, OSError):
            events = inflight = -1
        if now >= next_print:
            say(
                f"  t={now - t0:5.0f}s  enqueued {progress.enqueued:>6}/{cfg.containers}"
                f"  final events {events:>6}  in flight {inflight:>6}  kills {pool.kills:>3}"
                f"  worker exits {len(pool.unexpected_exits)}  redis restarts "
                f"{redis_server.restarts}  API calls {state.total_calls}"
            )
            next_print += cfg.progress_every
        done_at = progress.done_at
        if done_at is None:
            continue
        if now >= done_at + cfg.window:
            stop_chaos.set()  # let the tail settle without new kills
        if events >= cfg.containers:
            with contextlib.suppress(RedisError, OSError):
                if await _all_final(redis, keys, ids):
                    return True
        if now > done_at + give_up_after:
            return False


# ----- accounting --------------------------------------------------------------------------


@dataclass
class LogFacts:
    """What the workers' JSON logs say about one container."""

    tries: set[int] = field(default_factory=set)
    saw: set[str] = field(default_factory=set)  # statuses a check recorded from an answer
    reconciled: bool = False

    @property
    def unlogged_runs(self) -> int:
        """Runs of the job (arq's job_try) that never logged an outcome: killed mid-check."""
        return max(self.tries, default=0) - len(self.tries)


_RUN_MESSAGES = (
    "checked",
    "final state",
    "check outcome not written",
    "run no longer owns its poll; outcome dropped",
)


def parse_worker_logs(paths: Iterable[Path]) -> dict[str, LogFacts]:
    facts: defaultdict[str, LogFacts] = defaultdict(LogFacts)
    for path in paths:
        with path.open("rb") as f:
            for raw in f:
                if b'"container_id"' not in raw:
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut by SIGKILL
                cid = line.get("container_id")
                msg = str(line.get("msg", ""))
                if not isinstance(cid, str):
                    continue
                if msg.startswith("poll without a job resumed"):
                    facts[cid].reconciled = True
                    continue
                if not msg.startswith(_RUN_MESSAGES):
                    continue
                job_try = line.get("job_try")
                if isinstance(job_try, int):
                    facts[cid].tries.add(job_try)
                status = line.get("status")
                if isinstance(status, str) and ("error" not in line or status == "FAILED"):
                    facts[cid].saw.add(status)
    return facts


@dataclass(frozen=True, slots=True)
class Explained:
    container_id: str
    scenario: str
    reason: str
    answers: tuple[str, ...]


@dataclass
class ScenarioRow:
    n: int = 0
    right: int = 0
    explained: int = 0
    wrong: int = 0
    lost: int = 0
    calls: list[int] = field(default_factory=list)


@dataclass
class FaultRunReport:
    config: FaultRunConfig
    right: int = 0
    explained: list[Explained] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    duplicate_events: list[str] = field(default_factory=list)
    missing_events: list[str] = field(default_factory=list)
    stray_events: int = 0
    over_bound: list[str] = field(default_factory=list)
    calls_max: int = 0
    calls_mean: float = 0.0
    calls_total: int = 0
    over_max_checks: int = 0
    over_max_checks_by_cause: Counter[str] = field(default_factory=Counter)
    expected_starved: float = 0.0
    kills: int = 0
    unexpected_exits: list[tuple[int, int]] = field(default_factory=list)
    redis_restarts: int = 0
    redis_downtime: float = 0.0
    enqueue_outcomes: Counter[str] = field(default_factory=Counter)
    intake_written: int = 0
    dead_letters: int = 0
    intake_left: int = 0
    intake_pending: int = 0
    inflight_left: int = 0
    queue_left: int = 0
    reconciled: int = 0
    per_scenario: dict[str, ScenarioRow] = field(default_factory=dict)
    wall_time: float = 0.0
    workdir: Path | None = None

    @property
    def containers(self) -> int:
        return self.config.containers

    @property
    def passed(self) -> bool:
        return not (
            self.lost
            or self.wrong
            or self.late
            or self.duplicate_events
            or self.missing_events
            or self.stray_events
            or self.over_bound
            or self.dead_letters
        )

    def render(self) -> str:
        n = self.containers
        cfg = self.config
        why = Counter(e.reason for e in self.explained)
        lines = [
            "",
            "results",
            f"  containers                    {n}",
            f"  reached the expected state    {self.right} ({self.right / n:.2%})",
            f"  explained TIMED_OUT           {len(self.explained)}"
            + (f"  ({', '.join(f'{k} {v}' for k, v in sorted(why.items()))})" if why else "")
            + f"; model estimate of fault-starved (faults alone): {self.expected_starved:.2f}",
            f"  wrong                         {len(self.wrong)}",
            f"  lost (no final state)         {len(self.lost)}",
            f"  timed out with checks left    {len(self.late)} (started too late: overload)",
            f"  duplicate final events        {len(self.duplicate_events)} containers",
            f"  missing final events          {len(self.missing_events)}"
            f" (stray events {self.stray_events})",
            f"  API status calls / container  max {self.calls_max}, mean {self.calls_mean:.2f}, "
            f"total {self.calls_total}",
            f"    bound: {cfg.max_checks} checks + 1 per throttled answer (not a spent check) + 1"
            f" per dropped connection (aiohttp re-sends the GET once) + 1 per SIGKILLed run",
            f"    over {cfg.max_checks}: {self.over_max_checks} containers "
            + _counts(self.over_max_checks_by_cause)
            + f"; over the bound: {len(self.over_bound)}",
            f"  worker SIGKILLs {self.kills}, unexpected worker exits {len(self.unexpected_exits)}"
            + (
                f" (exit codes {sorted({c for _, c in self.unexpected_exits})})"
                if self.unexpected_exits
                else ""
            ),
            f"  redis restarts {self.redis_restarts} (down {self.redis_downtime:.2f} s in all)",
            f"  enqueue outcomes {dict(sorted(self.enqueue_outcomes.items()))}, intake entries "
            f"{self.intake_written}, dead letters {self.dead_letters}",
            f"  left over: intake {self.intake_left} (pending {self.intake_pending}), in flight "
            f"{self.inflight_left}, queued jobs {self.queue_left}; settled by the reconciler "
            f"{self.reconciled}",
            f"  wall time                     {self.wall_time:.1f} s",
            "",
            _table(
                [
                    [
                        "scenario",
                        "expect",
                        "n",
                        "right",
                        "explained",
                        "wrong",
                        "lost",
                        "calls mean",
                        "calls max",
                    ]
                ]
                + [
                    [
                        name,
                        _BY_NAME[name].expect_label,
                        str(r.n),
                        str(r.right),
                        str(r.explained),
                        str(r.wrong),
                        str(r.lost),
                        f"{sum(r.calls) / max(1, len(r.calls)):.2f}",
                        str(max(r.calls, default=0)),
                    ]
                    for name, r in self.per_scenario.items()
                ]
            ),
        ]
        for title, items in (
            ("wrong", self.wrong),
            ("lost", self.lost),
            ("timed out with checks left (overload)", self.late),
            ("duplicate events", self.duplicate_events),
            ("missing events", self.missing_events),
            ("over the call bound", self.over_bound),
        ):
            if items:
                lines.append(f"\n{title} (first 10):")
                lines += [f"  {item}" for item in items[:10]]
        if self.explained:
            lines.append(
                "\nexplained TIMED_OUT (first 10): container, scenario, why, the API's answers"
                " (X@2s: sent after the client's timeout)"
            )
            lines += [
                f"  {e.container_id} {e.scenario}: {e.reason}; {' '.join(e.answers)}"
                for e in self.explained[:10]
            ]
        if self.workdir is not None:
            lines.append(f"\nlogs kept in {self.workdir}")
        lines.append("\nPASS" if self.passed else "\nFAIL")
        return "\n".join(lines)


_BY_NAME = {sc.name: sc for sc in SCENARIOS}


def _counts(counter: Counter[str]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) + ")" if counter else ""


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def call_bound(cfg: FaultRunConfig, answers: Sequence[Answer], facts: LogFacts | None) -> int:
    """The most status calls one container may cost, and why.

    ``max_checks`` spent checks; a throttled answer spends no check (the check is postponed and
    the window extended); aiohttp re-sends an idempotent GET once when the connection drops, so
    each dropped answer can bring one more call within the same check; a run SIGKILLed after its
    call but before recording it is run again and calls again (``LogFacts.unlogged_runs``).
    """
    drops = sum(a.label == "drop" for a in answers)
    throttled = sum(a.label in THROTTLE_LABELS for a in answers)
    killed = facts.unlogged_runs if facts else 0
    return cfg.max_checks + drops + throttled + killed


def _matches(sc: Scenario, r: PollResult) -> bool:
    if r.status != sc.expect:
        return False
    if sc.error_message is not None and r.error_message != sc.error_message:
        return False
    if sc.error_kind is not None and r.last_error_kind != sc.error_kind:
        return False
    return not (r.last_error and "disappeared" in r.last_error)


def classify_container(
    cfg: FaultRunConfig,
    cid: str,
    result: PollResult | None,
    answers: Sequence[Answer],
    facts: LogFacts | None,
) -> tuple[str, str]:
    """("right" | "explained" | "wrong" | "late" | "lost", detail)."""
    sc = scenario_of(cid)
    if result is None or not result.final:
        state = "no result hash" if result is None else f"{result.status}, checks {result.checks}"
        return "lost", f"{cid} {sc.name}: {state}"
    if _matches(sc, result):
        return "right", ""
    detail = (
        f"{cid} {sc.name}: expected {sc.expect_label}, got {result.status}"
        f"{':' + result.error_message if result.error_message else ''} (checks {result.checks}, "
        f"last_error {result.last_error!r}; answers {' '.join(a.label for a in answers)})"
    )
    decisive = sc.decisive_label
    if result.status != "TIMED_OUT" or decisive is None:
        return "wrong", detail
    if result.last_error and "disappeared" in result.last_error:
        return "wrong", detail + " - its job was lost"
    if facts is not None and sc.expect in facts.saw:
        return "wrong", detail + " - a check had seen the expected answer"
    prompt = [a for a in answers if a.label == decisive and a.delay < cfg.http_timeout]
    killed = facts is not None and facts.unlogged_runs > 0
    if prompt and killed:
        return "explained", "crash-starved: the run that got it was SIGKILLed, re-run too late"
    if prompt:
        # Answered in time, no run killed, and still no check recorded it: a timeout under load
        # or a client that misread the answer; either way not something to explain away.
        return "wrong", detail + " - answered in time, but no check recorded it"
    if result.window_delay >= cfg.throttle_max_delay - 1e-6:
        return "explained", "throttle-starved: its account's pauses used up the window's extension"
    if result.checks >= cfg.max_checks:
        return "explained", "fault-starved: no answer carried it in time, in all its checks"
    if killed:
        return "explained", "crash-starved: a SIGKILLed run's re-run found the window closed"
    # Fewer checks than the window allows, and no kill or throttling to account for it: the
    # checks started too late (an overloaded machine). The service behaved as designed, but the
    # run proves nothing about such a container, so it fails.
    return "late", detail + " - the window closed before its checks were done"


async def _read_all(redis: Redis, keys: Keys, ids: Sequence[str]) -> list[PollResult | None]:
    out: list[PollResult | None] = []
    for start in range(0, len(ids), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for cid in ids[start : start + 1000]:
                pipe.hgetall(keys.result(cid))
            raws = await pipe.execute()
        out += [PollResult.from_hash(raw) if raw else None for raw in raws]
    return out


async def _event_counts(redis: Redis, keys: Keys) -> Counter[str]:
    counts: Counter[str] = Counter()
    last = "-"
    while True:
        batch = await redis.xrange(keys.events, min=last, count=5000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return counts
        for _id, fields in batch:
            counts[fields.get(b"container_id", b"").decode()] += 1
        last = batch[-1][0].decode()


async def account(
    cfg: FaultRunConfig,
    redis: Redis,
    keys: Keys,
    ids: Sequence[str],
    state: LedgerState,
    pool: WorkerPool,
    redis_server: RedisServer,
    progress: Progress,
    workdir: Path,
) -> FaultRunReport:
    results = await retrying(lambda: _read_all(redis, keys, ids))
    events = await retrying(lambda: _event_counts(redis, keys))
    facts = parse_worker_logs(pool.logs)
    report = FaultRunReport(config=cfg, workdir=workdir)
    report.per_scenario = {sc.name: ScenarioRow() for sc in SCENARIOS}
    ours = set(ids)
    report.stray_events = sum(v for k, v in events.items() if k not in ours)
    calls_all: list[int] = []
    for i, (cid, result) in enumerate(zip(ids, results, strict=True)):
        sc = scenario_of_index(i)
        row = report.per_scenario[sc.name]
        row.n += 1
        answers = state.ledger.get(cid, [])
        fact = facts.get(cid)
        verdict, detail = classify_container(cfg, cid, result, answers, fact)
        if verdict == "right":
            report.right += 1
            row.right += 1
        elif verdict == "explained":
            late = cfg.http_timeout
            shown = tuple(a.label if a.delay < late else f"{a.label}@{a.delay:g}s" for a in answers)
            report.explained.append(Explained(cid, sc.name, detail, shown))
            row.explained += 1
        elif verdict == "wrong":
            report.wrong.append(detail)
            row.wrong += 1
        elif verdict == "late":
            report.late.append(detail)
            row.wrong += 1
        else:
            report.lost.append(detail)
            row.lost += 1
        n_events = events.get(cid, 0)
        if n_events > 1:
            report.duplicate_events.append(f"{cid}: {n_events} final events")
        if result is not None and result.final and n_events == 0:
            report.missing_events.append(f"{cid}: final {result.status} but no event")
        calls = len(answers)
        calls_all.append(calls)
        row.calls.append(calls)
        bound = call_bound(cfg, answers, fact)
        if calls > bound:
            labels = " ".join(a.label for a in answers)
            report.over_bound.append(f"{cid}: {calls} calls > bound {bound} (answers {labels})")
        if calls > cfg.max_checks:
            report.over_max_checks += 1
            causes = []
            if any(a.label in THROTTLE_LABELS for a in answers):
                causes.append("throttled")
            if any(a.label == "drop" for a in answers):
                causes.append("drop")
            if fact is not None and fact.unlogged_runs:
                causes.append("killed run")
            report.over_max_checks_by_cause["+".join(causes) or "none"] += 1
        if fact is not None and fact.reconciled:
            report.reconciled += 1
    report.calls_total = sum(calls_all)
    report.calls_max = max(calls_all, default=0)
    report.calls_mean = report.calls_total / max(1, len(calls_all))
    report.expected_starved = sum(
        starved_probability(
            scenario_of_index(i).steps,
            fault_rate=cfg.fault_rate,
            kinds=DEFAULT_FAULT_KINDS,
            checks=cfg.max_checks,
        )
        for i in range(cfg.containers)
        if scenario_of_index(i).decisive_label is not None
    )
    report.kills = pool.kills
    report.unexpected_exits = list(pool.unexpected_exits)
    report.redis_restarts = redis_server.restarts
    report.redis_downtime = redis_server.downtime
    report.enqueue_outcomes = progress.outcomes
    report.intake_written = progress.intake_written
    report.dead_letters = int(await redis.xlen(keys.dead_letters))
    report.intake_left = int(await redis.xlen(keys.intake))
    try:
        report.intake_pending = int((await redis.xpending(keys.intake, INTAKE_GROUP))["pending"])
    except RedisError:
        report.intake_pending = 0
    report.inflight_left = int(await redis.zcard(keys.inflight))
    # Both queues: the checks' and the webhook deliveries'.
    report.queue_left = int(await redis.zcard(keys.queue)) + int(
        await redis.zcard(keys.webhook_queue)
    )
    return report


# ----- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    d = FaultRunConfig()
    p = argparse.ArgumentParser(
        prog="python -m bench.fault_run",
        description="Crash, restart and fault-injection run of threads-poller, with figures.",
    )
    p.add_argument("--containers", type=int, default=d.containers)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--kill-every", type=float, default=d.kill_every, help="seconds; 0: no kills")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate)
    p.add_argument("--interval", type=float, default=d.interval, help="POLL_INTERVAL_SECONDS")
    p.add_argument("--window", type=float, default=d.window, help="POLL_MAX_SECONDS")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rate", type=float, default=d.rate, help="containers enqueued per second")
    p.add_argument("--intake-share", type=float, default=d.intake_share)
    p.add_argument("--accounts", type=int, default=d.accounts)
    p.add_argument("--http-timeout", type=float, default=d.http_timeout)
    p.add_argument("--job-timeout", type=float, default=d.job_timeout)
    p.add_argument("--max-jobs", type=int, default=d.max_jobs, help="WORKER_MAX_JOBS")
    p.add_argument("--throttle-backoff", type=float, default=d.throttle_backoff)
    p.add_argument(
        "--redis-restart-at",
        type=float,
        default=None,
        help="seconds after the start (default: halfway through enqueueing; <0: never)",
    )
    p.add_argument("--appendfsync", choices=["always", "everysec", "no"], default=d.appendfsync)
    p.add_argument("--keep", action="store_true", help="keep logs and the AOF even on success")
    return p


def config_from_args(args: argparse.Namespace) -> FaultRunConfig:
    cfg = FaultRunConfig(
        containers=args.containers,
        workers=args.workers,
        kill_every=args.kill_every,
        fault_rate=args.fault_rate,
        interval=args.interval,
        window=args.window,
        seed=args.seed,
        rate=args.rate,
        intake_share=args.intake_share,
        accounts=args.accounts,
        http_timeout=args.http_timeout,
        job_timeout=args.job_timeout,
        max_jobs=args.max_jobs,
        throttle_backoff=args.throttle_backoff,
        redis_restart_at=args.redis_restart_at,
        appendfsync=args.appendfsync,
        keep=args.keep,
    )
    problems = []
    if cfg.containers < 1 or cfg.workers < 1 or cfg.rate <= 0:
        problems.append("--containers, --workers and --rate must be positive")
    if not 0 <= cfg.fault_rate <= 1 or not 0 <= cfg.intake_share <= 1:
        problems.append("--fault-rate and --intake-share must be within [0, 1]")
    if cfg.job_timeout < 2 * cfg.http_timeout:
        problems.append("--job-timeout must be at least twice --http-timeout (as the worker's)")
    if problems:
        raise SystemExit("fault_run: " + "; ".join(problems))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(build_parser().parse_args(argv))

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        report = asyncio.run(run_fault_run(cfg, say=say))
    except KeyboardInterrupt:
        return 130
    say(report.render())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
