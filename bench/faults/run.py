"""Nothing is lost: a crash, restart and fault-injection run that ends in figures.

    .venv/bin/python -m bench.faults.run [--containers N] [--workers 3] [--kill-every S]
        [--fault-rate 0.2] [--interval S] [--window S] [--seed N] [--rate N/s] ...

N containers with scripted outcomes (the id says which script, so each container has one known
expected final state: ``bench.faults.scenarios``) are polled through the Threads API simulator,
which answers a share of all status calls with a random fault, by several ``threads-poller
worker`` processes on one private redis-server with AOF on. Every few seconds one worker is
SIGKILLed and started again; Redis itself is SIGKILLed once mid-run and restarted on the same
port and directory (the AOF is replayed). Containers go in at a steady rate, some through the
Python API and some through the intake stream.

At the end every container's result hash, the events stream, the simulator's call log and the
workers' logs are held against what each script asked for. The exit code is 0 only when nothing
was lost, nothing was wrong, no final event was duplicated or missing and no container saw more
status calls than the documented bound (``run_call_bound``). The README's section "Nothing is
lost: fault run" explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.faults.invariants import event_problem, final_events, is_throttled, per_container
from bench.faults.ledger import Ledger
from bench.faults.pool import WorkerPool, retrying, settings_of
from bench.faults.report import Explained, FaultRunReport, ScenarioRow
from bench.faults.scenarios import (
    SCENARIOS,
    FaultRunConfig,
    account_of,
    classify_container,
    container_id,
    parse_worker_logs,
    run_call_bound,
    scenario_of_index,
    starved_probability,
    via_intake,
)
from bench.harness import RedisServer, environment_without_settings, simulator_in_process
from config import Settings
from simulator import DEFAULT_FAULT_KINDS, SimulatorState
from worker.client.producer import enqueue_many
from worker.core.result import PollResult
from worker.store.keys import INTAKE_GROUP, Keys

TOKEN = "fault-run-token-not-a-secret"  # noqa: S105 - the simulator takes any token
KEY_PREFIX = "threads-poller-fault-run"


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
            await pool.kill_and_restart(rng.randrange(len(pool.slots)))
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
    state = SimulatorState(
        default_script=("notfound",),
        fault_rate=cfg.fault_rate,
        fault_kinds=DEFAULT_FAULT_KINDS,
        slow_seconds=cfg.slow_seconds,
        seed=cfg.seed,
    )
    # Every answer and how late it went out (the simulator's own log records a random "slow"
    # fault under the status it delays): "the API said FINISHED" means "in time for the client".
    ledger = Ledger().attach(state)
    for sc in SCENARIOS:
        state.set_script(sc.prefix + "*", sc.steps)
    keys = Keys(KEY_PREFIX)
    ids = [container_id(i) for i in range(cfg.containers)]
    progress = Progress()
    try:
        async with simulator_in_process(state) as sim:
            env = worker_env(cfg, redis_server.url, sim.base_url)
            # The workers' settings exactly (for the enqueue window and the kill re-run delay).
            settings = settings_of(env)
            rerun = rerun_after_kill(settings)
            say("threads-poller fault run\n" + cfg.describe(rerun))
            say(f"  work directory: {workdir}")
            pool = WorkerPool(env, logdir)
            redis = Redis.from_url(redis_server.url, socket_timeout=10, socket_connect_timeout=2)
            stop_chaos = asyncio.Event()
            try:
                await pool.start_slots(cfg.workers)
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
                    cfg, redis, keys, ids, ledger, pool, redis_server, progress, workdir
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
    state: SimulatorState,
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


async def _read_all(redis: Redis, keys: Keys, ids: Sequence[str]) -> list[PollResult | None]:
    out: list[PollResult | None] = []
    for start in range(0, len(ids), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for cid in ids[start : start + 1000]:
                pipe.hgetall(keys.result(cid))
            raws = await pipe.execute()
        out += [PollResult.from_hash(raw) if raw else None for raw in raws]
    return out


async def account(
    cfg: FaultRunConfig,
    redis: Redis,
    keys: Keys,
    ids: Sequence[str],
    ledger: Ledger,
    pool: WorkerPool,
    redis_server: RedisServer,
    progress: Progress,
    workdir: Path,
) -> FaultRunReport:
    results = await retrying(lambda: _read_all(redis, keys, ids))
    events = per_container(await retrying(lambda: final_events(redis, keys.events)))
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
        answers = ledger.of(cid)
        fact = facts.get(cid)
        verdict, detail = classify_container(cfg, cid, result, answers, fact)
        if verdict == "right":
            report.right += 1
            row.right += 1
        elif verdict == "explained":
            late = cfg.http_timeout
            shown = tuple(
                a.answer if a.delay < late else f"{a.answer}@{a.delay:g}s" for a in answers
            )
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
        final = result is not None and result.final
        problem = event_problem(n_events, final=final)
        if problem == "duplicate":
            report.duplicate_events.append(f"{cid}: {n_events} final events")
        elif problem == "missing" and result is not None:
            report.missing_events.append(f"{cid}: final {result.status} but no event")
        calls = len(answers)
        calls_all.append(calls)
        row.calls.append(calls)
        bound = run_call_bound(cfg, answers, fact)
        if calls > bound:
            labels = " ".join(a.answer for a in answers)
            report.over_bound.append(f"{cid}: {calls} calls > bound {bound} (answers {labels})")
        if calls > cfg.max_checks:
            report.over_max_checks += 1
            causes = []
            if any(is_throttled(a.answer) for a in answers):
                causes.append("throttled")
            if any(a.answer == "drop" for a in answers):
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
        prog="python -m bench.faults.run",
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
        raise SystemExit("faults.run: " + "; ".join(problems))
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
