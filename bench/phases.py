"""The bench's world and its phases: ``Bench`` owns one private redis-server, the simulator
(``threads-poller simulate``) and the worker processes it starts; each ``phase_*`` method runs one
phase of bench/bench.py (its docstring says what each one measures) and fills in ``Figures``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import heapq
import itertools
import json
import math
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench import harness
from bench.baselines import FINISHED_IDS, FLOOR_DONE, NOOP_QUEUE, TOKEN
from bench.harness import (
    Child,
    RedisServer,
    cpu_seconds,
    environment_without_settings,
    free_port,
    machine_cpu_seconds,
    proc_status_kib,
    start_simulator_process,
    threads_poller_command,
)
from bench.measure import (
    MACHINE,
    STEAL,
    Progress,
    RedisDelta,
    counters_delta,
    describe_commands,
    fmt,
    out,
    percentile,
    redis_counters,
    track,
    worker_commands_total,
)
from bench.paced import PacedRun, phase_paced

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "bench"

JOB_EXPIRY_MS = 86_400_000

# Container id prefixes, one per scripted behaviour of the simulator (FINISHED_IDS: baselines).
SCHEDULE_IDS = "7"  # IN_PROGRESS forever: every container uses all its checks
# The history phase: polls of 6 checks (interval and window as the schedule's max_checks reads).
HISTORY_POLLS = 200
HISTORY_INTERVAL = 1.0
HISTORY_WINDOW = 5.0
CAPACITY_IDS = "6"  # IN_PROGRESS forever

# The schedule phase's compressed window: checks at 0, 1, 2, 3, 4 s (5 per container).
SCHEDULE_INTERVAL = 1.0
SCHEDULE_WINDOW = 4.0
REENQUEUE_AFTER = (1.5, 2.5)  # seconds after its first enqueue, each id goes in again

# The webhooks phase (issue 22): a paced check load, alone and beside deliveries that hang.
HOOK_LOAD_IDS = "7"  # IN_PROGRESS forever, like the schedule phase's
HOOK_FINAL_IDS = "4"  # FINISHED on the first check (the simulator's default script)
HOOK_DELIVERIES = 1000
HOOK_RECEIVERS = 4  # blackholed receivers: listening sockets that never accept
HOOK_LOAD_PER_SECOND = 10.0  # containers/s of the paced load (5 checks each)
HOOK_SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 - the bench's own

ALL_PHASES = (
    "noop",
    "floor",
    "throughput",
    "schedule",
    "capacity",
    "scale",
    "webhooks",
    "paced",
    "history",
    "million",
    "tracing",
)
# The million phase takes ~4 minutes and ~1 GB of Redis, the tracing phase (two throughput
# runs, off and on) is for the tracing cost: both asked for by name only.
DEFAULT_PHASES = tuple(p for p in ALL_PHASES if p not in ("million", "tracing"))
# How far ahead the million phase moves its parked polls' next checks (README, "A million").
PARK_MS = 3_600_000


# ----- processes (bench/harness.py) --------------------------------------------------------------


def spawn(
    name: str, cmd: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path
) -> Child:
    return _register(harness.spawn(name, cmd, log, env=env, cwd=cwd))


# Every process this bench started, so that none outlives it (stop_spawned, at the end of main).
_SPAWNED: list[Child] = []


def _register(child: Child) -> Child:
    _SPAWNED.append(child)
    return child


async def start_redis(tmp: Path) -> RedisServer:
    """The bench's own redis-server: a free port, AOF and RDB off, data in ``tmp/redis``."""
    server = RedisServer(tmp / "redis", new_session=True)
    try:
        await server.astart()
    except BaseException:
        server.kill()
        raise
    _register(server.child)
    return server


async def start_simulator(tmp: Path) -> tuple[Child, str, str]:
    """``threads-poller simulate --port 0``: FINISHED by default, IN_PROGRESS for two prefixes."""
    args = [
        "--default-script",
        "FINISHED",
        "--script",
        f"{SCHEDULE_IDS}*=IN_PROGRESS",
        "--script",
        f"{CAPACITY_IDS}*=IN_PROGRESS",
    ]
    child, base, admin = await start_simulator_process(
        args, tmp / "simulator.log", env=clean_env(), cwd=tmp
    )
    _register(child)
    return child, base, admin


def clean_env() -> dict[str, str]:
    """This environment without any setting of threads-poller, so only ours apply."""
    env = environment_without_settings()
    env["PYTHONPATH"] = str(REPO)
    return env


# ----- configuration and figures -----------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    n: int
    capacity_n: int
    million_n: int
    schedule_seconds: float
    capacity_run_seconds: float
    phases: tuple[str, ...]
    scale_workers: tuple[int, ...]
    log_level: str
    worker_env: dict[str, str]
    profile: Path | None
    keep: bool
    max_jobs: int
    half_rate: float | None
    # The paced phase (bench/paced.py): containers, accounts, and each account's requests/s.
    paced_n: int = 6000
    paced_accounts: int = 20
    paced_rate: float = 25.0


@dataclass
class Figures:
    noop_rate: float | None = None
    noop_full_rate: float | None = None
    noop_reads_per_job: float | None = None
    noop_cmds_per_job: float | None = None
    noop_cpu_ms: float | None = None
    noop_redis_cpu_ms: float | None = None
    floor_rate: float | None = None
    floor_full_rate: float | None = None
    floor_cpu_ms: float | None = None
    floor_redis_cpu_ms: float | None = None
    floor_reads_per_check: float | None = None
    floor_cmds_per_check: float | None = None
    check_cpu_ms: float | None = None
    check_redis_cpu_ms: float | None = None
    check_rate: float | None = None
    check_full_rate: float | None = None
    check_wall: float | None = None
    reads_per_check: float | None = None
    cmds_per_check: float | None = None
    calls_per_container_throughput: float | None = None
    rss_end_throughput_mib: float | None = None
    rss_idle_mib: float | None = None
    bytes_per_container: float | None = None
    bytes_per_checked_container: float | None = None
    enqueue_rate: float | None = None
    rss_100k_mib: float | None = None
    hwm_100k_mib: float | None = None
    capacity_in_flight: int | None = None
    million_n: int | None = None
    million_enqueue_s: float | None = None
    million_bytes_per_container: float | None = None
    # The history phase: MEMORY USAGE of {prefix}:history:{id} after a 6-check poll.
    history_bytes: float | None = None
    history_polls: int | None = None
    million_late_p99: float | None = None
    million_late_max: float | None = None
    million_rate: float | None = None
    million_rss_mib: float | None = None
    sched_target_rate: float | None = None
    sched_actual_rate: float | None = None
    late_p50: float | None = None
    late_p99: float | None = None
    late_max: float | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    lag_max: float | None = None
    calls_per_container_schedule: float | None = None
    expected_checks: int | None = None
    extra_calls_duplicates: int | None = None
    duplicates_refused: int | None = None
    duplicates_sent: int | None = None
    scale: list[ScaleRun] = field(default_factory=list)
    # The webhooks phase: the paced load alone, then beside HOOK_DELIVERIES hung deliveries.
    hooks: list[HookRun] = field(default_factory=list)
    paced: list[PacedRun] = field(default_factory=list)
    # The paced phase's control: the floor's CPU ms per check all at once, then at its rate.
    paced_floor: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ScaleRun:
    """One run of the scale phase: N FINISHED containers drained by ``workers`` processes."""

    workers: int
    n: int
    done: int
    rate: float | None  # aggregate checks/s, 10-90 %
    worker_cpu_ms: float | None  # all workers' CPU per check
    worker_pct: float | None  # all workers together, % of one core
    redis_cpu_ms: float | None
    redis_pct: float | None
    sim_cpu_ms: float | None
    sim_pct: float | None
    machine_pct: float | None  # busy CPU of the whole machine, % of all its cores
    cmds_per_check: float
    events: int  # entries in the events stream
    finished_once: int  # containers with exactly one event, and that one FINISHED
    duplicate_events: int  # events beyond the first of a container
    other_events: int  # events whose status is not FINISHED
    calls_per_container: float
    wrong_calls: int  # containers with a call count other than 1

    @property
    def correct(self) -> bool:
        return (
            self.finished_once == self.n
            and self.events == self.n
            and self.calls_per_container == 1.0
            and self.wrong_calls == 0
        )


@dataclass
class HookRun:
    """One run of the webhooks phase: the paced check load beside ``deliveries`` deliveries to
    blackholed receivers (0: none), its checks' lateness as the simulator saw it."""

    deliveries: int
    containers: int
    checks: int
    unchecked: int  # containers of the paced load that never got a check
    late_p50: float
    late_p99: float
    late_max: float
    first_p99: float
    attempts: int  # delivery attempts settled (each one waited WEBHOOK_TIMEOUT_SECONDS)
    hung_now: int  # deliveries running (hung) at the end of the paced load


@dataclass
class DrainRun:
    """What Bench.drain measured: N FINISHED containers, drained by one or more workers."""

    workers: list[Child]
    ids: list[str]
    prog: Progress
    delta: RedisDelta
    calls: dict[str, Any]
    cpu: str  # Bench.cpu_line over the run
    rss_kib: int | None  # VmRSS of the first worker at the end


# ----- the bench --------------------------------------------------------------------------------


# Per process name: (monotonic time, CPU seconds so far) at one instant.
CpuSnapshot = dict[str, tuple[float, float]]


class Bench:
    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
        # The worker's VmRSS at the end of the last lateness run (phase_schedule), in MiB.
        self.last_rss_mib: float | None = None
        self.tmp = tmp
        self.figures = Figures()
        self.redis_url = ""
        self.sim_base = ""
        self.sim_admin = ""
        self.children: list[Child] = []
        self._redis: Redis | None = None
        self._http: aiohttp.ClientSession | None = None
        self._worker_runs = 0

    @property
    def redis(self) -> Redis:
        assert self._redis is not None
        return self._redis

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    # --- infrastructure

    async def __aenter__(self) -> Bench:
        redis_server = await start_redis(self.tmp)
        self.children.append(redis_server.child)
        self.redis_url = redis_server.url
        sim_child, self.sim_base, self.sim_admin = await start_simulator(self.tmp)
        self.children.append(sim_child)
        self._redis = Redis.from_url(self.redis_url)
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        if self._redis is not None:
            await self._redis.aclose()
        for child in reversed(self.children):
            child.stop()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    @property
    def redis_pid(self) -> int:
        return self.child("redis").pid

    @property
    def sim_pid(self) -> int:
        return self.child("simulator").pid

    def settings(self, **overrides: Any) -> Any:
        from config import load_settings

        # Like the workers' (worker_env): no pacing, or enqueue would space the first checks.
        values: dict[str, Any] = {"account_max_requests_per_second": 0}
        values.update(overrides)
        return load_settings(redis_url=self.redis_url, key_prefix=PREFIX, **values)

    def worker_env(self, **settings: str) -> dict[str, str]:
        env = clean_env()
        env.update(
            REDIS_URL=self.redis_url,
            THREADS_ACCESS_TOKEN=TOKEN,
            THREADS_API_BASE_URL=self.sim_base,
            ACCOUNT_MAX_REQUESTS_PER_SECOND="0",
            KEY_PREFIX=PREFIX,
            METRICS_PORT=str(free_port()),
            LOG_FORMAT="json",
            LOG_LEVEL=self.cfg.log_level,
            WORKER_MAX_JOBS=str(self.cfg.max_jobs),
        )
        env.update(settings)
        env.update(self.cfg.worker_env)
        return env

    def spawn_worker(self, label: str, env: dict[str, str]) -> Child:
        self._worker_runs += 1
        cmd = [*threads_poller_command(), "worker"]
        log = self.tmp / f"worker-{self._worker_runs}-{label}.log"
        return spawn(f"worker-{label}", cmd, log, env=env, cwd=self.tmp)

    async def wait_ready(self, *children: Child, limit_s: float = 30.0) -> tuple[float, int]:
        """Seconds until every worker's first heartbeat (written at the end of its start-up),
        and how many Redis requests this wait sent (ZCARD polls)."""
        from worker.store.keys import Keys

        t0, polls = time.monotonic(), 0
        limit_s *= max(1, len(children))  # they start at once on the same cores
        while time.monotonic() - t0 < limit_s and all(c.alive() for c in children):
            polls += 1
            if await self.redis.zcard(Keys(PREFIX).workers) >= len(children):
                return time.monotonic() - t0, polls
            await asyncio.sleep(0.02)
        failed = next((c for c in children if not c.alive()), children[0])
        raise RuntimeError(f"{failed.name} did not start:\n{failed.tail()}")

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.sim_admin + path, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def reset(self) -> None:
        await self.redis.flushall()
        await self.sim("POST", "/reset", {})

    async def enqueue_ids(self, ids: Sequence[str], settings: Any, batch: int = 1000) -> int:
        """enqueue_many in batches; returns how many came back ``enqueued``."""
        from worker.client.producer import enqueue_many

        done = 0
        for i in range(0, len(ids), batch):
            outcomes = await enqueue_many(self.redis, ids[i : i + batch], settings=settings)
            done += sum(o.outcome == "enqueued" for o in outcomes)
        return done

    def start_profiler(self, child: Child, label: str) -> Child | None:
        if self.cfg.profile is None:
            return None
        self.cfg.profile.mkdir(parents=True, exist_ok=True)
        raw = self.cfg.profile / f"{label}.txt"
        cmd = [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(child.pid),
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(raw),
        ]
        prof = spawn("py-spy", cmd, self.tmp / f"py-spy-{label}.log", cwd=self.tmp)
        out(f"  profiling the worker with py-spy -> {raw}")
        return prof

    # --- phases

    async def phase_noop(self) -> None:
        # Stock arq, as it ships: its default job format (pickle), read by its own Worker. Our
        # worker's jobs are JSON (worker.store.jobdata) and never go through this.
        from arq.jobs import serialize_job

        from worker.store.keys import Keys

        n, f, job_data = self.cfg.n, self.figures, Keys().job_data
        out(f"\n[noop] bare arq: {n} no-op jobs, max_jobs={self.cfg.max_jobs}, same poll_delay")
        await self.reset()
        now_ms = int(time.time() * 1000)
        payload = serialize_job("noop", (), {}, None, now_ms)
        for i in range(0, n, 5000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for j in range(i, min(n, i + 5000)):
                    job_id = f"noop:{j}"
                    pipe.psetex(job_data(job_id), JOB_EXPIRY_MS, payload)
                    pipe.zadd(NOOP_QUEUE, {job_id: now_ms})
                await pipe.execute()
        cmd = [
            sys.executable,
            "-m",
            "bench.bench",
            "--role",
            "noop-worker",
            "--redis-url",
            self.redis_url,
            "--max-jobs",
            str(self.cfg.max_jobs),
            "--poll-delay",
            str(self.poll_delay(60.0)),
        ]

        async def count() -> int:
            return n - int(await self.redis.zcard(NOOP_QUEUE))

        child, prog, delta, cpu0, cpu1 = await self.run_child("noop-worker", cmd, count)
        child.stop()
        f.noop_rate, f.noop_full_rate = prog.steady_rate, prog.full_rate
        f.noop_cpu_ms, f.noop_redis_cpu_ms = prog.cpu_ms_per_item, prog.redis_cpu_ms_per_item
        f.noop_reads_per_job = delta.reads / n
        f.noop_cmds_per_job = worker_commands_total(delta) / n
        out(f"  done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s from spawn")
        out(
            f"  jobs/s: {fmt(prog.steady_rate)} (10-90 % of the queue), "
            f"{fmt(prog.full_rate)} (first to last)"
        )
        out(
            f"  Redis per job: {f.noop_reads_per_job:.2f} client round trips (reads), "
            f"{f.noop_cmds_per_job:.2f} commands: {describe_commands(delta, n)}"
        )
        out(
            f"  CPU per job (10-90 %): bare arq worker {fmt(prog.cpu_ms_per_item, '.3f')} ms, "
            f"redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms"
        )
        out(f"  CPU while running: {self.cpu_line(cpu0, cpu1)}")

    async def phase_floor(self) -> None:
        n, f, cfg = self.cfg.n, self.figures, self.cfg
        api_slots = api_max_concurrency(cfg.worker_env)
        loop = event_loop(cfg.worker_env)
        out(
            f"\n[floor] no job system: {n} checks, each one aiohttp GET of the simulator's status "
            f"endpoint + one EVALSHA (HSET + EXPIRE + ZADD); {cfg.max_jobs} checks at once, "
            f"{api_slots} requests at once (the worker's WORKER_MAX_JOBS, API_MAX_CONCURRENCY); "
            f"event loop {loop}"
        )
        await self.reset()
        child, prog, delta, cpu0, cpu1, code = await self.run_floor("floor", n)
        calls = await self.sim("GET", "/calls")
        f.floor_rate, f.floor_full_rate = prog.steady_rate, prog.full_rate
        f.floor_cpu_ms, f.floor_redis_cpu_ms = prog.cpu_ms_per_item, prog.redis_cpu_ms_per_item
        f.floor_reads_per_check = delta.reads / n
        f.floor_cmds_per_check = worker_commands_total(delta) / n
        if prog.done < n or code not in (0, None):
            f.notes.append(f"floor: {prog.done}/{n} checks done, exit status {code}")
            out(f"  ! {prog.done}/{n} done; floor log tail:\n{child.tail()}")
        out(f"  done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s from spawn")
        out(
            f"  checks/s: {fmt(prog.steady_rate)} (10-90 % of the checks), "
            f"{fmt(prog.full_rate)} (first to last); API status calls {calls['status_calls']}"
        )
        out(
            f"  Redis per check: {f.floor_reads_per_check:.2f} client round trips (reads), "
            f"{f.floor_cmds_per_check:.2f} commands (incl. those run inside Lua): "
            f"{describe_commands(delta, n)}"
        )
        out(
            f"  CPU per check (10-90 %): floor process {fmt(prog.cpu_ms_per_item, '.3f')} ms, "
            f"redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms, simulator "
            f"{fmt(prog.ms_per_item('sim_cpu'), '.3f')} ms"
        )
        out(f"  CPU while running: {self.cpu_line(cpu0, cpu1)}")

    def poll_delay(self, interval: float) -> float:
        from worker.runtime.app import poll_delay

        return poll_delay(self.settings(poll_interval_seconds=interval))

    async def run_floor(
        self, name: str, n: int, per_second: float = 0.0, tick: float = 0.0
    ) -> tuple[Child, Progress, RedisDelta, CpuSnapshot, CpuSnapshot, int | None]:
        """Run the floor (bench/baselines.py) for ``n`` checks, at ``per_second`` (0: all at
        once) started on ``tick``s, until it exits: what ``run_child`` returns, and its exit
        status."""
        cfg = self.cfg
        cmd = [
            sys.executable,
            "-m",
            "bench.bench",
            "--role",
            "floor-worker",
            "--redis-url",
            self.redis_url,
            "--api-url",
            self.sim_base,
            "--n",
            str(n),
            "--max-jobs",
            str(cfg.max_jobs),
            "--api-concurrency",
            str(api_max_concurrency(cfg.worker_env)),
            "--event-loop",
            event_loop(cfg.worker_env),
            "--floor-rate",
            str(per_second),
            "--floor-tick",
            str(tick),
        ]

        async def count() -> int:
            return int(await self.redis.zcard(FLOOR_DONE))

        child, prog, delta, cpu0, cpu1 = await self.run_child(name, cmd, count, n)
        for _ in range(500):  # it exits by itself once its last check is written
            if not child.alive():
                break
            await asyncio.sleep(0.02)
        return child, prog, delta, cpu0, cpu1, child.stop()

    async def run_child(
        self,
        name: str,
        cmd: list[str],
        count: Callable[[], Awaitable[int]],
        n: int | None = None,
    ) -> tuple[Child, Progress, RedisDelta, CpuSnapshot, CpuSnapshot]:
        """Spawn one measured process and track it until ``count`` reaches n (``--n`` unless
        given): the child, its progress, the Redis counters' change over the run, and CPU
        snapshots at both ends."""
        n = self.cfg.n if n is None else n
        before = await redis_counters(self.redis)
        spawned = time.monotonic()
        child = spawn(name, cmd, self.tmp / f"{name}.log", env=clean_env(), cwd=REPO)
        cpu0 = self.cpu_snapshot(child)
        prog = await track(
            count,
            n,
            spawned=spawned,
            children=[child],
            redis_pid=self.redis_pid,
            sim_pid=self.sim_pid,
            limit_s=max(120.0, n / 100),
        )
        cpu1 = self.cpu_snapshot(child)
        after = await redis_counters(self.redis)
        delta = counters_delta(before, after, own_reads=prog.polls + 1)
        return child, prog, delta, cpu0, cpu1

    def cpu_snapshot(self, *workers: Child) -> CpuSnapshot:
        """CPU seconds so far of each process of ours, of the whole machine, and stolen."""
        now = time.monotonic()
        snap = {}
        for c in [*self.children, *workers]:
            secs = cpu_seconds(c.pid)
            if secs is not None:
                snap[c.name] = (now, secs)
        snap["bench (this script)"] = (now, time.process_time())
        busy, steal = machine_cpu_seconds()
        snap[MACHINE] = (now, busy)
        snap[STEAL] = (now, steal)
        return snap

    def cpu_line(self, a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]) -> str:
        """Per-process CPU between two snapshots, in % of one core, and what others used."""
        pct: dict[str, float] = {}
        for name, (t1, s1) in b.items():
            if name in a and t1 > a[name][0]:
                pct[name] = 100 * (s1 - a[name][1]) / (t1 - a[name][0])
        ours = sum(v for k, v in pct.items() if k not in (MACHINE, STEAL))
        others = pct.get(MACHINE, 0.0) - ours
        parts = [f"{k} {v:.0f}%" for k, v in pct.items() if k not in (MACHINE, STEAL)]
        parts.append(f"other processes {max(0.0, others):.0f}%")
        if pct.get(STEAL, 0.0) >= 1:
            parts.append(f"stolen by the hypervisor {pct[STEAL]:.0f}%")
        if others > 15:
            self.figures.notes.append(
                f"other processes used {others:.0f}% of a core during a measurement: "
                "figures are lower than on an idle machine"
            )
        return ", ".join(parts) + f" (of one core; {os.cpu_count()} cores)"

    async def drain(
        self, label: str, workers: int, *, hold: bool, env: dict[str, str] | None = None
    ) -> DrainRun:
        """The throughput workload: N containers scripted FINISHED enqueued beforehand, then
        ``workers`` worker processes drain them. With ``hold`` the queue is renamed away until
        every worker is ready, so that they all start on it together."""
        from worker.store.keys import Keys

        n, keys = self.cfg.n, Keys(PREFIX)
        await self.reset()
        ids = [f"{FINISHED_IDS}{i:015d}" for i in range(n)]
        t0 = time.monotonic()
        enqueued = await self.enqueue_ids(ids, self.settings())
        out(f"  enqueued {enqueued} with enqueue_many in {time.monotonic() - t0:.1f} s")
        held = keys.queue + ":held"
        if hold:
            await self.redis.rename(keys.queue, held)
        before = await redis_counters(self.redis)
        spawned = time.monotonic()
        # Room in the events stream for every final event (it is trimmed at EVENTS_MAX_LEN).
        # One env per worker: each one gets a METRICS_PORT of its own.
        children = [
            self.spawn_worker(
                label if workers == 1 else f"{label}-{i + 1}",
                self.worker_env(EVENTS_MAX_LEN=str(max(100_000, 2 * n)), **(env or {})),
            )
            for i in range(workers)
        ]
        ready, own_reads = await self.wait_ready(*children)
        if hold:
            # The workers' start-up is not part of the figures: count from the release.
            before = await redis_counters(self.redis)
            await self.redis.rename(held, keys.queue)
            spawned, own_reads = time.monotonic(), 1
        pids = ", ".join(str(c.pid) for c in children)
        plural = "s" if workers > 1 else ""
        out(
            f"  worker{plural} (pid{plural} {pids}) ready after {ready:.2f} s"
            + ("; queue released to all at once" if hold and workers > 1 else "")
            + ("; queue released" if hold and workers == 1 else "")
        )
        prof = self.start_profiler(children[0], label) if label == "throughput" else None
        cpu0 = self.cpu_snapshot(*children)

        async def count() -> int:
            return int(await self.redis.xlen(keys.events))

        prog = await track(
            count,
            n,
            spawned=spawned,
            children=children,
            redis_pid=self.redis_pid,
            sim_pid=self.sim_pid,
            limit_s=max(180.0, n / 50),
        )
        cpu1 = self.cpu_snapshot(*children)
        after = await redis_counters(self.redis)
        rss = proc_status_kib(children[0].pid, "VmRSS")
        for child in children:
            child.stop()
        if prof is not None:
            prof.stop()
        calls = await self.sim("GET", "/calls")
        delta = counters_delta(before, after, own_reads=own_reads + prog.polls + 1)
        if prog.done < n:
            self.figures.notes.append(f"{label}: only {prog.done}/{n} final before the timeout")
            for child in children:
                out(f"  ! only {prog.done}/{n} final; {child.name} log tail:\n{child.tail()}")
        return DrainRun(children, ids, prog, delta, calls, self.cpu_line(cpu0, cpu1), rss)

    async def phase_tracing(self) -> None:
        """README "Tracing": the throughput workload with tracing off, then on (OTLP/HTTP to a
        loopback receiver that drops what it gets): the worker's CPU per check, both ways."""
        from aiohttp import web

        received = [0, 0]  # requests, bytes

        async def sink(request: web.Request) -> web.Response:
            received[0] += 1
            received[1] += len(await request.read())
            return web.Response(status=200, content_type="application/x-protobuf")

        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", sink)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}"
        n = self.cfg.n
        try:
            out(f"\n[tracing] throughput of {n} containers, tracing off then on")
            off = await self.drain("tracing-off", 1, hold=False)
            on = await self.drain(
                "tracing-on",
                1,
                hold=False,
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"},
            )
        finally:
            await runner.cleanup()
        a, b = off.prog.cpu_ms_per_item, on.prog.cpu_ms_per_item
        out(f"  worker CPU per check: off {fmt(a, '.3f')} ms, on {fmt(b, '.3f')} ms")
        out(
            f"  checks/s: off {fmt(off.prog.steady_rate)}, on {fmt(on.prog.steady_rate)}; "
            f"the receiver got {received[0]} exports, {received[1] / 1e6:.1f} MB"
        )
        if a and b:
            out(f"  tracing on costs {b - a:+.3f} ms CPU per check ({(b / a - 1) * 100:+.0f} %)")

    async def phase_throughput(self) -> None:
        n, f = self.cfg.n, self.figures
        out(f"\n[throughput] ours: {n} containers enqueued beforehand, FINISHED on the first check")
        run = await self.drain("throughput", 1, hold=False)
        prog, delta, calls = run.prog, run.delta, run.calls
        f.check_rate, f.check_full_rate, f.check_wall = (
            prog.steady_rate,
            prog.full_rate,
            prog.wall,
        )
        f.reads_per_check = delta.reads / n
        f.check_cpu_ms, f.check_redis_cpu_ms = prog.cpu_ms_per_item, prog.redis_cpu_ms_per_item
        f.cmds_per_check = worker_commands_total(delta) / n
        f.calls_per_container_throughput = int(calls["status_calls"]) / n
        f.rss_end_throughput_mib = None if run.rss_kib is None else run.rss_kib / 1024
        out(f"  done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s from spawn")
        out(
            f"  checks/s: {fmt(prog.steady_rate)} (10-90 % of the events), "
            f"{fmt(prog.full_rate)} (first to last)"
        )
        out(
            f"  API status calls per container: {f.calls_per_container_throughput:.3f} "
            f"({calls['status_calls']} calls, {n} containers)"
        )
        out(
            f"  Redis per check: {f.reads_per_check:.2f} client round trips (reads), "
            f"{f.cmds_per_check:.2f} commands (incl. those run inside Lua): "
            f"{describe_commands(delta, n)}"
        )
        out(
            f"  CPU per check (10-90 %): worker {fmt(prog.cpu_ms_per_item, '.3f')} ms, "
            f"redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms"
        )
        out(f"  CPU while running: {run.cpu}")
        out(f"  worker RSS at the end: {fmt(f.rss_end_throughput_mib, '.1f')} MiB")

    async def phase_history(self) -> None:
        """What a container's history costs (README, "History"): polls of enqueue + 6 checks +
        final (IN_PROGRESS until the window ends), then MEMORY USAGE of each history key."""
        from worker.core.history import EventKind, parse_history
        from worker.store.keys import Keys

        n, keys, f = HISTORY_POLLS, Keys(PREFIX), self.figures
        out(
            f"\n[history] {n} polls of enqueue + 6 checks + final (interval "
            f"{HISTORY_INTERVAL:g} s, window {HISTORY_WINDOW:g} s): Redis bytes of each history"
        )
        await self.reset()
        settings = self.settings(
            poll_interval_seconds=HISTORY_INTERVAL, poll_max_seconds=HISTORY_WINDOW
        )
        env = self.worker_env(
            POLL_INTERVAL_SECONDS=str(HISTORY_INTERVAL), POLL_MAX_SECONDS=str(HISTORY_WINDOW)
        )
        child = self.spawn_worker("history", env)
        try:
            await self.wait_ready(child)
            ids = [f"{SCHEDULE_IDS}{i:015d}" for i in range(n)]
            await self.enqueue_ids(ids, settings)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if await self.redis.xlen(keys.events) >= n:
                    break
                await asyncio.sleep(0.1)
        finally:
            child.stop()
        sizes: list[int] = []
        shapes: collections.Counter[tuple[int, int]] = collections.Counter()
        for cid in ids:
            raw = await self.redis.get(keys.history(cid))
            events = parse_history(raw)
            checks = sum(e.kind is EventKind.CHECK for e in events)
            shapes[len(events), checks] += 1
            if len(events) == 8 and checks == 6:
                sizes.append(int(await self.redis.memory_usage(keys.history(cid), samples=0) or 0))
        f.history_polls = len(sizes)
        f.history_bytes = sum(sizes) / len(sizes) if sizes else None
        out(
            f"  history bytes per 6-check poll: {fmt(f.history_bytes)} (MEMORY USAGE, mean of "
            f"{len(sizes)} polls with exactly enqueue + 6 checks + final, of {n})"
        )
        if len(sizes) < n:
            out(f"  (entries, checks) of each poll: {dict(shapes)}")

    async def final_events(self) -> dict[str, list[str]]:
        """Every entry of the events stream: container id -> the statuses of its events."""
        from worker.store.keys import Keys

        stream, start = Keys(PREFIX).events, "-"
        seen: dict[str, list[str]] = {}
        while True:
            entries = await self.redis.xrange(stream, min=start, max="+", count=5000)
            for _entry_id, data in entries:
                cid = data.get(b"container_id", b"").decode()
                seen.setdefault(cid, []).append(data.get(b"status", b"").decode())
            if len(entries) < 5000:
                return seen
            start = "(" + entries[-1][0].decode()

    async def phase_scale(self) -> None:
        n, f = self.cfg.n, self.figures
        cores = os.cpu_count() or 1
        counts = self.cfg.scale_workers
        out(
            f"\n[scale] the throughput workload ({n} containers, FINISHED on the first check) "
            f"drained by {', '.join(map(str, counts))} worker processes at once; {cores} cores"
        )
        out(
            "  per run: the queue is held back until every worker is ready, then released to "
            "all; figures from 10 % to 90 % of the events"
        )
        for k in counts:
            procs = k + 2  # the workers, redis-server, the simulator (this script mostly waits)
            over = ": oversubscribed (more processes than cores)" if procs > cores else ""
            out(
                f"  -- {k} worker{'s' if k > 1 else ''} + redis-server + simulator = {procs} "
                f"processes on {cores} cores{over}"
            )
            run = await self.drain(f"scale-{k}w", k, hold=True)
            prog = run.prog
            events = await self.final_events()
            statuses = [events.get(cid, []) for cid in run.ids]
            containers = run.calls["containers"]
            wrong_calls = sum(
                1 for cid in run.ids if int(containers.get(cid, {}).get("count", 0)) != 1
            )
            result = ScaleRun(
                workers=k,
                n=n,
                done=prog.done,
                rate=prog.steady_rate,
                worker_cpu_ms=prog.ms_per_item("cpu"),
                worker_pct=prog.core_pct("cpu"),
                redis_cpu_ms=prog.ms_per_item("redis_cpu"),
                redis_pct=prog.core_pct("redis_cpu"),
                sim_cpu_ms=prog.ms_per_item("sim_cpu"),
                sim_pct=prog.core_pct("sim_cpu"),
                machine_pct=None if (b := prog.core_pct("busy")) is None else b / cores,
                cmds_per_check=worker_commands_total(run.delta) / n,
                events=sum(len(v) for v in events.values()),
                finished_once=sum(1 for v in statuses if v == ["FINISHED"]),
                duplicate_events=sum(max(0, len(v) - 1) for v in events.values()),
                other_events=sum(1 for v in events.values() for st in v if st != "FINISHED"),
                calls_per_container=int(run.calls["status_calls"]) / n,
                wrong_calls=wrong_calls,
            )
            f.scale.append(result)
            out(
                f"     checks/s {fmt(result.rate)} (10-90 %), done {prog.done}/{n} in "
                f"{fmt(prog.wall, '.1f')} s from the release"
            )
            out(
                f"     CPU per check: workers {fmt(result.worker_cpu_ms, '.3f')} ms, redis-server "
                f"{fmt(result.redis_cpu_ms, '.3f')} ms, simulator {fmt(result.sim_cpu_ms, '.3f')}"
                f" ms; Redis commands per check {result.cmds_per_check:.2f}"
            )
            out(
                f"     CPU in % of one core: workers {fmt(result.worker_pct)}%, redis-server "
                f"{fmt(result.redis_pct)}%, simulator {fmt(result.sim_pct)}%; whole machine "
                f"{fmt(result.machine_pct)}% busy ({cores} cores, other processes included)"
            )
            out(f"     CPU while running: {run.cpu}")
            out(
                f"     correctness: {result.events} final events for {n} containers, "
                f"{result.finished_once} FINISHED exactly once, {result.duplicate_events} "
                f"duplicate, {result.other_events} not FINISHED, "
                f"{n - sum(1 for v in statuses if v)} missing; API calls per container "
                f"{result.calls_per_container:.3f}, {wrong_calls} containers with a count "
                f"other than 1 -> {'OK' if result.correct else 'WRONG'}"
            )
            if not result.correct:
                f.notes.append(f"scale: {k} workers: not every container FINISHED exactly once")
        base = f.scale[0] if f.scale else None
        out(
            "  workers  checks/s  speed-up  worker ms/check  redis ms/check  redis %core  "
            "sim %core  machine busy"
        )
        for r in f.scale:
            speedup = r.rate / base.rate if base and base.rate and r.rate else None
            out(
                f"  {r.workers:7d}  {fmt(r.rate):>8}  {fmt(speedup, '.2f'):>8}  "
                f"{fmt(r.worker_cpu_ms, '.3f'):>15}  {fmt(r.redis_cpu_ms, '.3f'):>14}  "
                f"{fmt(r.redis_pct):>10}%  {fmt(r.sim_pct):>8}%  {fmt(r.machine_pct):>11}%"
            )
        out(
            "  reading: Redis runs on one thread, so 'redis %core' near 100 means Redis is the "
            "limit; 'machine busy' (all cores, other processes included) near 100 means the cores "
            "are"
        )
        if counts and max(counts) + 2 > cores:
            out(
                f"  ! {max(counts)} workers + redis-server + the simulator oversubscribe {cores} "
                "cores: beyond that point the workers take CPU from Redis and the simulator, so "
                "these speed-ups say how this box shares its cores, not how far workers with a "
                "core each would go"
            )

    async def phase_schedule(self, *, fresh: bool = True) -> tuple[float, float, float]:
        """The lateness run; ``fresh`` False: on top of what Redis holds (the million phase),
        without touching the schedule phase's figures. Returns lateness p50, p99, max."""
        from worker.client.producer import enqueue_many
        from worker.core.decisions import Schedule
        from worker.store.keys import Keys

        f, keys = (self.figures if fresh else Figures()), Keys(PREFIX)
        schedule = Schedule(SCHEDULE_INTERVAL, SCHEDULE_WINDOW)
        max_rate = self.cfg.half_rate
        if max_rate is None:
            rate = self.figures.check_rate  # the throughput phase's, when it ran
            max_rate = rate / 2 if rate else 100.0
        per_second = max_rate / schedule.max_checks
        duration = self.cfg.schedule_seconds
        total = max(1, round(per_second * duration))
        f.sched_target_rate, f.expected_checks = max_rate, schedule.max_checks
        out(
            f"\n[schedule{'' if fresh else ', beside them'}] {max_rate:.0f} checks/s "
            "(half the measured maximum): "
            f"{per_second:.1f} containers/s for {duration:.0f} s = {total} containers, "
            f"IN_PROGRESS, interval {SCHEDULE_INTERVAL:g} s, window {SCHEDULE_WINDOW:g} s "
            f"({schedule.max_checks} checks each); each id enqueued twice more while polled"
        )
        if fresh:
            await self.reset()
        settings = self.settings(
            poll_interval_seconds=SCHEDULE_INTERVAL, poll_max_seconds=SCHEDULE_WINDOW
        )
        env = self.worker_env(
            POLL_INTERVAL_SECONDS=str(SCHEDULE_INTERVAL), POLL_MAX_SECONDS=str(SCHEDULE_WINDOW)
        )
        child = self.spawn_worker("schedule", env)
        await self.wait_ready(child)
        await asyncio.sleep(0.5)
        rss_idle = proc_status_kib(child.pid, "VmRSS")
        f.rss_idle_mib = None if rss_idle is None else rss_idle / 1024
        ids = [f"{SCHEDULE_IDS}{i:015d}" for i in range(total)]
        # Arrivals at random (Poisson) times: nothing lines up with arq's poll period.
        rng = random.Random(6)
        arrivals = list(itertools.accumulate(rng.expovariate(per_second) for _ in ids))
        redo: list[tuple[float, int, list[str]]] = []  # heap of (time, seq, ids) to enqueue again
        dup_sent = dup_refused = sent = seq = 0
        cpu0 = self.cpu_snapshot(child)
        t0 = time.monotonic()
        while sent < total or redo:
            now = time.monotonic() - t0
            upto = bisect.bisect_right(arrivals, now, lo=sent)
            if upto > sent:
                batch = ids[sent:upto]
                await enqueue_many(self.redis, batch, settings=settings)
                sent = upto
                for after in REENQUEUE_AFTER:
                    seq += 1
                    heapq.heappush(redo, (now + after, seq, batch))
            while redo and redo[0][0] <= now:
                _, _, batch = heapq.heappop(redo)
                outcomes = await enqueue_many(self.redis, batch, settings=settings)
                dup_sent += len(outcomes)
                dup_refused += sum(o.outcome == "duplicate" for o in outcomes)
            if sent >= total and not redo:
                break
            wake = min(
                arrivals[sent] if sent < total else math.inf, redo[0][0] if redo else math.inf
            )
            await asyncio.sleep(max(0.0, wake - (time.monotonic() - t0)))

        async def count() -> int:
            return int(await self.redis.xlen(keys.events))

        prog = await track(
            count,
            total,
            spawned=t0,
            children=[child],
            redis_pid=self.redis_pid,
            sim_pid=self.sim_pid,
            limit_s=SCHEDULE_WINDOW + 60.0,
        )
        cpu1 = self.cpu_snapshot(child)
        rss_end = proc_status_kib(child.pid, "VmRSS")
        self.last_rss_mib = None if rss_end is None else rss_end / 1024
        child.stop()
        calls = (await self.sim("GET", "/calls"))["containers"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hmget(keys.result(cid), ["enqueued_at", "checks", "status"])
            rows = await pipe.execute()
        late_first: list[float] = []
        late_next: list[float] = []
        n_calls = n_checks = 0
        for cid, (enq, checks, _status) in zip(ids, rows, strict=True):
            times = sorted(calls.get(cid, {}).get("times", []))
            n_calls += len(times)
            n_checks += int(checks or 0)
            if not times or enq is None:
                continue
            late_first.append(times[0] - float(enq))
            late_next += [b - a - SCHEDULE_INTERVAL for a, b in itertools.pairwise(times)]
        late_all = late_first + late_next
        lags = worker_lags(child.log)
        f.late_p50, f.late_p99, f.late_max = (
            percentile(late_all, 50),
            percentile(late_all, 99),
            max(late_all, default=math.nan),
        )
        if lags:
            f.lag_p50, f.lag_p99, f.lag_max = percentile(lags, 50), percentile(lags, 99), max(lags)
        f.calls_per_container_schedule = n_calls / total
        f.extra_calls_duplicates = n_calls - n_checks
        f.duplicates_sent, f.duplicates_refused = dup_sent, dup_refused
        end = prog.at(total)
        elapsed = (end.t if end else time.monotonic()) - t0
        f.sched_actual_rate = n_calls / max(elapsed, 1e-9)
        out(f"  all final: {prog.done}/{total}; {n_calls} status calls in {elapsed:.1f} s")
        out(
            "  lateness, simulator side (request arrival - due; due = enqueued_at for check 1, "
            "previous arrival + interval after):"
        )
        for label, values in (("all", late_all), ("1st", late_first), ("later", late_next)):
            out(
                f"    {label:5} n={len(values):6}  p50 {fmt(percentile(values, 50), '.3f')} s  "
                f"p99 {fmt(percentile(values, 99), '.3f')} s  "
                f"max {fmt(max(values, default=math.nan), '.3f')} s"
            )
        which = "every check" if self.cfg.log_level.upper() == "DEBUG" else "final checks only"
        out(
            f"  lateness, worker side (lag_s of its log lines, {which} at LOG_LEVEL "
            f"{self.cfg.log_level}: run start - next_check_at): n={len(lags)}  "
            f"p50 {fmt(f.lag_p50, '.3f')} s  p99 {fmt(f.lag_p99, '.3f')} s  "
            f"max {fmt(f.lag_max, '.3f')} s"
        )
        out(
            f"  API calls per container: {f.calls_per_container_schedule:.3f} "
            f"(expected {schedule.max_checks}); checks recorded {n_checks}; "
            f"calls beyond recorded checks: {f.extra_calls_duplicates}"
        )
        out(
            f"  duplicate enqueues: {dup_sent} sent while polling, {dup_refused} answered "
            "'duplicate' (no new job, no call)"
        )
        out(f"  CPU during the phase: {self.cpu_line(cpu0, cpu1)}")
        return (
            percentile(late_all, 50),
            percentile(late_all, 99),
            max(late_all, default=math.nan),
        )

    async def phase_million(self) -> None:
        """A million in flight on one Redis: N containers enqueued through the CLI (one
        ``threads-poller enqueue`` reading ids on stdin), Redis memory per container, then the
        schedule phase's lateness run beside them, with their next checks parked an hour ahead
        (as between two checks: one worker cannot check a million a minute, and the run measures
        what a million in flight cost the others, not a backlog)."""
        from worker.store.keys import Keys

        n, f, keys = self.cfg.million_n, self.figures, Keys(PREFIX)
        out(f"\n[million] {n} containers enqueued through the CLI, default schedule")
        await self.reset()
        ids_file = self.tmp / "million-ids.txt"
        with ids_file.open("w") as fh:
            for i in range(n):
                fh.write(f"{CAPACITY_IDS}{i:015d}\n")
        used0 = int((await self.redis.info("memory"))["used_memory"])
        t0 = time.monotonic()
        with ids_file.open("rb") as stdin:
            proc = await asyncio.create_subprocess_exec(
                *threads_poller_command(),
                "enqueue",
                stdin=stdin,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self.worker_env(),
                cwd=self.tmp,
            )
            _, err = await proc.communicate()
        took = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"enqueue exited {proc.returncode}: {err.decode()[-300:]}")
        used1 = int((await self.redis.info("memory"))["used_memory"])
        in_flight = int(await self.redis.zcard(keys.inflight))
        queued = int(await self.redis.zcard(keys.queue))
        f.million_n, f.million_enqueue_s = in_flight, took
        f.million_bytes_per_container = (used1 - used0) / max(in_flight, 1)
        out(
            f"  threads-poller enqueue: {in_flight} in flight, {queued} jobs queued in "
            f"{took:.1f} s ({in_flight / took:.0f}/s); used_memory {used0 / 2**20:.1f} -> "
            f"{used1 / 2**20:.1f} MiB, {f.million_bytes_per_container:.0f} bytes per container"
        )
        # Park them: every queued check (all due now) an hour ahead, 10,000 per script call.
        park = self.redis.register_script(
            "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],"
            " 'WITHSCORES', 'LIMIT', 0, 10000) "
            "for i = 1, #ids, 2 do redis.call('ZADD', KEYS[1], 'XX', ids[i + 1] + ARGV[2],"
            " ids[i]) end return #ids / 2"
        )
        seconds, micros = await self.redis.time()
        cutoff = seconds * 1000 + micros // 1000 + PARK_MS // 2  # above every unparked score
        moved = 0
        while got := int(await park(keys=[keys.queue], args=[cutoff, PARK_MS])):
            moved += got
        out(f"  parked {moved} checks {PARK_MS / 1000:.0f} s ahead")
        # The lateness run at half one worker's rate, with the million in Redis.
        _p50, p99, worst = await self.phase_schedule(fresh=False)
        used2 = int((await self.redis.info("memory"))["used_memory"])
        f.million_late_p99, f.million_late_max = p99, worst
        f.million_rss_mib = self.last_rss_mib
        out(
            f"  with {in_flight} in flight: lateness p99 {fmt(p99, '.3f')} s, max "
            f"{fmt(worst, '.3f')} s; worker RSS at the end {fmt(f.million_rss_mib, '.1f')} MiB; "
            f"used_memory {used2 / 2**20:.1f} MiB"
        )

    async def phase_webhooks(self) -> None:
        """Issue 22: deliveries apart from checks. The same paced check load (Poisson arrivals,
        IN_PROGRESS, interval 1 s, window 4 s) runs twice on a fresh worker: once alone, once
        right after HOOK_DELIVERIES containers went final with a webhook to a blackholed
        receiver (a socket that never accepts: each attempt hangs for WEBHOOK_TIMEOUT_SECONDS,
        then is retried). Lateness = the simulator's request arrival - the check's due time."""
        f = self.figures
        duration = self.cfg.schedule_seconds
        out(
            f"\n[webhooks] {HOOK_LOAD_PER_SECOND:g} containers/s for {duration:.0f} s "
            f"(IN_PROGRESS, interval {SCHEDULE_INTERVAL:g} s, window {SCHEDULE_WINDOW:g} s), "
            f"alone, then beside {HOOK_DELIVERIES} deliveries to {HOOK_RECEIVERS} blackholed "
            "receivers"
        )
        holes = [socket.socket() for _ in range(HOOK_RECEIVERS)]
        try:
            for hole in holes:
                hole.bind((harness.HOST, 0))
                hole.listen(4096)  # and never accept: connections wait in the backlog
            urls = [f"http://{harness.HOST}:{h.getsockname()[1]}/hook" for h in holes]
            for urls_of_run in ([], urls):
                run = await self._hook_run(urls_of_run, duration)
                f.hooks.append(run)
                label = f"beside {run.deliveries} hung deliveries" if run.deliveries else "alone"
                out(
                    f"  {label:30} checks {run.checks:5} (containers never checked: "
                    f"{run.unchecked}): lateness p50 {run.late_p50:.3f} s  "
                    f"p99 {run.late_p99:.3f} s  max {run.late_max:.3f} s  "
                    f"(1st checks p99 {run.first_p99:.3f} s); delivery attempts timed out "
                    f"{run.attempts}, hung at the end {run.hung_now}"
                )
        finally:
            for hole in holes:
                hole.close()
        if len(f.hooks) == 2:
            a, b = f.hooks
            out(f"  p99 with - without: {b.late_p99 - a.late_p99:+.3f} s (target within 0.1 s)")

    async def _hook_run(self, urls: list[str], duration: float) -> HookRun:
        from worker.client.producer import enqueue_many
        from worker.store.keys import Keys

        keys = Keys(PREFIX)
        await self.reset()
        timing = {
            "poll_interval_seconds": SCHEDULE_INTERVAL,
            "poll_max_seconds": SCHEDULE_WINDOW,
            "webhook_secret": HOOK_SECRET,
            "webhook_allowed_hosts": harness.HOST,
        }
        settings = self.settings(**timing)
        env = self.worker_env(
            POLL_INTERVAL_SECONDS=str(SCHEDULE_INTERVAL),
            POLL_MAX_SECONDS=str(SCHEDULE_WINDOW),
            WEBHOOK_SECRET=HOOK_SECRET,
            WEBHOOK_ALLOWED_HOSTS=harness.HOST,
        )
        child = self.spawn_worker("webhooks-with" if urls else "webhooks-alone", env)
        try:
            await self.wait_ready(child)
            finals = [f"{HOOK_FINAL_IDS}{i:015d}" for i in range(HOOK_DELIVERIES)]
            for k, url in enumerate(urls or [None]):
                mine = finals[k :: len(urls) or 1]
                await enqueue_many(self.redis, mine, webhook_url=url, settings=settings)
            t_final = time.monotonic() + 60
            while await self.redis.xlen(keys.events) < len(finals):
                if time.monotonic() > t_final or not child.alive():
                    raise RuntimeError("the containers of the deliveries did not all go final")
                await asyncio.sleep(0.05)
            # Every delivery is due now; give the worker a moment to start them.
            await asyncio.sleep(0.5)
            n = round(HOOK_LOAD_PER_SECOND * duration)
            ids = [f"{HOOK_LOAD_IDS}{i:015d}" for i in range(n)]
            rng = random.Random(22)
            arrivals = list(
                itertools.accumulate(rng.expovariate(HOOK_LOAD_PER_SECOND) for _ in ids)
            )
            t0, sent = time.monotonic(), 0
            while sent < len(ids):
                upto = bisect.bisect_right(arrivals, time.monotonic() - t0, lo=sent)
                if upto > sent:
                    await enqueue_many(self.redis, ids[sent:upto], settings=settings)
                    sent = upto
                if sent < len(ids):
                    await asyncio.sleep(max(0.0, arrivals[sent] - (time.monotonic() - t0)))
            total = len(finals) + len(ids)
            t_end = time.monotonic() + SCHEDULE_WINDOW + 60
            while time.monotonic() < t_end:
                if await self.redis.xlen(keys.events) >= total:
                    break
                await asyncio.sleep(0.1)
            # Deliveries running now: their runs' locks (whichever queue they came from).
            locks = "arq:in-progress:" + keys.webhook_job_prefix + "*"
            hung_now = len([k async for k in self.redis.scan_iter(match=locks, count=1000)])
        finally:
            await child.astop()
        calls = (await self.sim("GET", "/calls"))["containers"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hget(keys.result(cid), "enqueued_at")
            for cid in finals:
                pipe.hget(keys.result(cid), "webhook_attempts")
            rows = await pipe.execute()
        late_first: list[float] = []
        late_all: list[float] = []
        unchecked = 0
        for cid, enq in zip(ids, rows[: len(ids)], strict=True):
            times = sorted(calls.get(cid, {}).get("times", []))
            if not times or enq is None:
                unchecked += 1
                continue
            late_first.append(times[0] - float(enq))
            late_all += [times[0] - float(enq)]
            late_all += [b - a - SCHEDULE_INTERVAL for a, b in itertools.pairwise(times)]
        attempts = sum(int(a or 0) for a in rows[len(ids) :])
        return HookRun(
            deliveries=len(finals) if urls else 0,
            containers=len(ids),
            checks=len(late_all),
            unchecked=unchecked,
            late_p50=percentile(late_all, 50),
            late_p99=percentile(late_all, 99),
            late_max=max(late_all, default=math.nan),
            first_p99=percentile(late_first, 99),
            attempts=attempts,
            hung_now=hung_now,
        )

    async def phase_paced(self) -> None:
        await phase_paced(self)

    async def phase_capacity(self) -> None:
        from worker.store.keys import Keys

        n, f, keys = self.cfg.capacity_n, self.figures, Keys(PREFIX)
        out(f"\n[capacity] {n} containers queued, default schedule (60 s / 300 s), no worker")
        await self.reset()
        settings = self.settings()
        ids = [f"{CAPACITY_IDS}{i:015d}" for i in range(n)]
        used0 = int((await self.redis.info("memory"))["used_memory"])
        t0 = time.monotonic()
        enqueued = await self.enqueue_ids(ids, settings)
        took = time.monotonic() - t0
        used1 = int((await self.redis.info("memory"))["used_memory"])
        f.enqueue_rate = enqueued / took
        f.bytes_per_container = (used1 - used0) / n
        sample = ids[:: max(1, n // 200)]
        hash_bytes = await mean_memory_usage(self.redis, [keys.result(c) for c in sample])
        gen = await self.redis.hget(keys.result(sample[0]), "generation")  # type: ignore[misc]
        job_key = keys.job_data(keys.job_id(sample[0], gen.decode() if gen else ""))
        job_bytes = await mean_memory_usage(self.redis, [job_key])
        queue_bytes = await mean_memory_usage(self.redis, [keys.queue]) / n
        inflight_bytes = await mean_memory_usage(self.redis, [keys.inflight]) / n
        out(
            f"  enqueued {enqueued} in {took:.1f} s ({f.enqueue_rate:.0f}/s, batches of 1000); "
            f"used_memory {used0 / 2**20:.1f} -> {used1 / 2**20:.1f} MiB"
        )
        out(
            f"  Redis memory per queued container: {f.bytes_per_container:.0f} bytes "
            f"(MEMORY USAGE: result hash ~{hash_bytes:.0f}, arq job key ~{job_bytes:.0f}, "
            f"queue zset ~{queue_bytes:.0f}, inflight zset ~{inflight_bytes:.0f} per entry)"
        )
        # Now a worker with all of them due: the first check of each, at full speed.
        child = self.spawn_worker("capacity", self.worker_env())
        await self.wait_ready(child)
        await asyncio.sleep(self.cfg.capacity_run_seconds)
        rss = proc_status_kib(child.pid, "VmRSS")
        hwm = proc_status_kib(child.pid, "VmHWM")
        in_flight = int(await self.redis.zcard(keys.inflight))
        child.stop()
        calls = await self.sim("GET", "/calls")
        checked = int(calls["status_calls"])
        used2 = int((await self.redis.info("memory"))["used_memory"])
        f.rss_100k_mib = None if rss is None else rss / 1024
        f.hwm_100k_mib = None if hwm is None else hwm / 1024
        f.capacity_in_flight = in_flight
        if checked:
            f.bytes_per_checked_container = f.bytes_per_container + (used2 - used1) / checked
        out(
            f"  worker with {in_flight} in flight for {self.cfg.capacity_run_seconds:.0f} s "
            f"({checked} first checks made): RSS {fmt(f.rss_100k_mib, '.1f')} MiB, "
            f"peak (VmHWM) {fmt(f.hwm_100k_mib, '.1f')} MiB"
        )
        out(
            f"  Redis memory per container after its first check: "
            f"{fmt(f.bytes_per_checked_container)} bytes (hash filled in, arq's retry key)"
        )


# ----- helpers of the phases --------------------------------------------------------------------


def event_loop(worker_env: dict[str, str]) -> str:
    """The worker's event loop: EVENT_LOOP from --worker-env, else the setting's default."""
    from config import Settings

    default = Settings.model_fields["event_loop"].default
    return worker_env.get("EVENT_LOOP", str(getattr(default, "value", default)))


def api_max_concurrency(worker_env: dict[str, str]) -> int:
    """The worker's API_MAX_CONCURRENCY: from --worker-env, else the setting's default."""
    from config import Settings

    default = Settings.model_fields["api_max_concurrency"].default
    return int(worker_env.get("API_MAX_CONCURRENCY", default))


def worker_lags(log: Path) -> list[float]:
    lags: list[float] = []
    with contextlib.suppress(OSError), log.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if '"lag_s"' not in line:
                continue
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                lag = data.get("lag_s")
                if isinstance(lag, int | float) and data.get("status") != "stale":
                    lags.append(float(lag))
    return lags


async def mean_memory_usage(r: Redis, keys: Sequence[str]) -> float:
    sizes = [await r.memory_usage(k, samples=0) for k in keys]
    found = [s for s in sizes if s]
    return sum(found) / len(found) if found else math.nan


def stop_spawned(timeout: float = 10.0) -> None:
    """Stop every process this bench started, last first (so that none outlives it)."""
    for child in reversed(_SPAWNED):
        child.stop(timeout=timeout)
