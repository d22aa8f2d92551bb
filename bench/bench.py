"""Performance report: throughput against bare arq and against the floor of a check with no job
system, scaling over workers, in-flight capacity, schedule accuracy.

    .venv/bin/python -m bench.bench [--quick] [--n N]
        [--phases noop,floor,throughput,schedule,capacity,scale] [--scale-workers 1,2,3]
        [--log-level INFO] [--worker-env K=V ...] [--profile DIR] [--keep]

One run, one machine, one private ``redis-server`` (started here on a free port, AOF and RDB off,
stopped at the end). Every process that does work is separate: the Threads API simulator
(``threads-poller simulate``), the worker(s) under test (``threads-poller worker``), the bare arq
worker of the baseline (``python -m bench.bench --role noop-worker``), the floor process
(``--role floor-worker``), Redis, and this script, which only enqueues and watches. They all
share the machine's cores; the output says how many, and how much CPU other processes took
during each measurement.

The worker runs with its own defaults (uvloop event loop, one Lua call to claim due jobs) plus
``--log-level`` (its ``LOG_LEVEL``; INFO logs final states only, DEBUG adds a line per check) and
any ``--worker-env K=V`` (e.g. ``EVENT_LOOP=asyncio`` to compare event loops).

Phases (``--phases`` picks some; the README's "Performance" section explains every figure):

``noop``        bare arq: N no-op jobs (``async def noop(ctx): return None``) written beforehand,
                then one arq Worker with the same ``max_jobs`` and ``poll_delay`` as ours runs
                them; jobs/s while the queue drains from 10 % to 90 %.
``floor``       the per-process floor of a check, with no job system: one asyncio process
                (``python -m bench.bench --role floor-worker``, the worker's event loop) that
                does, for each of N containers scripted FINISHED, one aiohttp GET of the
                simulator's status endpoint and one EVALSHA of a small Lua script (HSET +
                EXPIRE + ZADD) on the same redis-server, with the worker's concurrency
                (WORKER_MAX_JOBS checks at once, API_MAX_CONCURRENCY requests at once);
                checks/s (10 % to 90 %), its CPU and Redis's per check.
``throughput``  ours: N containers enqueued beforehand with ``worker.enqueue_many``, all scripted
                FINISHED (one check each), ``ACCOUNT_MAX_REQUESTS_PER_SECOND=0``; then one
                ``threads-poller worker`` runs; checks/s = final events per second (10 % to
                90 %). Also: worker and Redis CPU per check, Redis round trips and commands per
                check, API calls per container, the worker's RSS at the end.
``schedule``    lateness at half the checks/s measured above: containers scripted IN_PROGRESS
                arrive at random (Poisson) times at that mean rate, POLL_INTERVAL_SECONDS=1 and
                POLL_MAX_SECONDS=4 (at most 5 checks each); each id is enqueued twice more while
                it is polled (must cost no API call).
``capacity``    100,000 containers queued (no worker): Redis used_memory per container; then a
                worker runs for a few seconds with all of them due and IN_PROGRESS (interval 60
                s): its RSS with 100,000 in flight, and Redis memory per container once checked.
``scale``       the throughput workload with 1, 2 and 3 (``--scale-workers``) worker processes at
                once on the same Redis and simulator. The queue is held back (RENAMEd away) until
                every worker is ready, then released to all of them together. Per run: aggregate
                checks/s (10 % to 90 %), worker, Redis and simulator CPU per check and in % of
                one core (Redis runs on one thread: 100 % is its ceiling), how busy the whole
                machine was, and correctness: every container FINISHED exactly once (final
                events counted per id) with exactly one API call.

Exit status 0 whatever the figures: this is a report, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime
import heapq
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "bench"
NOOP_QUEUE = "bench-noop:queue"
FLOOR_PREFIX = "bench-floor"
FLOOR_DONE = FLOOR_PREFIX + ":done"  # zset: one member per check done (progress = ZCARD)
TOKEN = "bench-token-not-a-secret"  # noqa: S105 - the simulator accepts any token
ARQ_JOB_PREFIX = "arq:job:"
JOB_EXPIRY_MS = 86_400_000

# Container id prefixes, one per scripted behaviour of the simulator.
FINISHED_IDS = "9"  # default script: FINISHED on the first check
SCHEDULE_IDS = "7"  # IN_PROGRESS forever: every container uses all its checks
CAPACITY_IDS = "6"  # IN_PROGRESS forever

# The schedule phase's compressed window: checks at 0, 1, 2, 3, 4 s (5 per container).
SCHEDULE_INTERVAL = 1.0
SCHEDULE_WINDOW = 4.0
REENQUEUE_AFTER = (1.5, 2.5)  # seconds after its first enqueue, each id goes in again

# Targets of issue #6.
TARGET_RATIO = 1.0  # issue 16: at least bare arq's no-op rate, in the same run
TARGET_BYTES_PER_CONTAINER = 1024
TARGET_P99_LATENESS_S = 1.0
TARGET_RSS_MIB = 150.0

ALL_PHASES = ("noop", "floor", "throughput", "schedule", "capacity", "scale")
DEFAULT_PHASES = ALL_PHASES


# ----- small helpers -------------------------------------------------------------------------


def out(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of unsorted values; nan when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def fmt(value: float | None, spec: str = ".0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


MACHINE = "machine"
STEAL = "steal"


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, over all cores (/proc/stat)."""
    first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def code_version() -> str:
    """The commit under test, and which core files differ from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "config",
                "api_client",
                "worker",
                "simulator",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head}" + (f"; uncommitted changes in {', '.join(changed)}" if changed else "")


def mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


# ----- processes -----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    _handle: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str, cmd: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path
) -> Child:
    handle = log.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )
    child = Child(name, proc, log, handle)
    _SPAWNED.append(child)
    return child


# Every process this script started, so that none outlives it (see main).
_SPAWNED: list[Child] = []


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


async def start_redis(tmp: Path) -> tuple[Child, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    data = tmp / "redis"
    data.mkdir()
    cmd = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
        "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
        "--logfile", str(data / "redis.log"),
    ]  # fmt: skip
    child = spawn("redis", cmd, tmp / "redis.out", cwd=tmp)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(Exception):
            async with Redis.from_url(url) as r:
                if await r.ping():
                    return child, url
        if time.monotonic() > deadline or not child.alive():
            raise RuntimeError(f"redis-server did not start:\n{child.tail()}")
        await asyncio.sleep(0.05)


async def start_simulator(tmp: Path) -> tuple[Child, str, str]:
    """``threads-poller simulate --port 0``: FINISHED by default, IN_PROGRESS for two prefixes."""
    cmd = [
        str(BIN / "threads-poller"), "simulate", "--port", "0", "--default-script", "FINISHED",
        "--script", f"{SCHEDULE_IDS}*=IN_PROGRESS", "--script", f"{CAPACITY_IDS}*=IN_PROGRESS",
    ]  # fmt: skip
    child = spawn("simulator", cmd, tmp / "simulator.log", env=clean_env(), cwd=tmp)
    deadline = time.monotonic() + 20
    marker = "simulator listening on "
    while time.monotonic() < deadline and child.alive():
        for line in child.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(marker):
                base = line[len(marker) :].strip()
                root = base.rsplit("/", 1)[0]
                return child, base, root + "/_sim"
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the simulator did not start:\n{child.tail()}")


def clean_env() -> dict[str, str]:
    """This environment without any setting of threads-poller, so only ours apply."""
    from config import Settings

    names = {name.upper() for name in Settings.model_fields}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in names and not k.startswith("THREADS_ACCESS_TOKEN")
    }
    env["PYTHONPATH"] = str(REPO)
    return env


# ----- the bench's roles in subprocesses -----------------------------------------------------


async def noop(ctx: dict[str, Any]) -> None:
    return None


def run_noop_worker(redis_url: str, max_jobs: int, poll_delay: float) -> int:
    """The baseline: a bare arq Worker, arq's default log configuration (INFO, per-job lines)."""
    import logging.config

    from arq import Worker
    from arq.connections import RedisSettings
    from arq.logs import default_log_config
    from arq.worker import func

    logging.config.dictConfig(default_log_config(verbose=False))
    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=NOOP_QUEUE,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        keep_result=0,
        health_check_key=NOOP_QUEUE + ":health-check",
    )
    worker.run()
    return 0


# The floor's one Redis call per check: what a check must write at the least (its result, an
# expiry, an index entry), in one round trip.
# KEYS[1] result hash, KEYS[2] done zset; ARGV[1] status, ARGV[2] now, ARGV[3] TTL s, ARGV[4] id.
FLOOR_LUA = """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'checked_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""


def floor_ids(n: int) -> list[str]:
    return [f"{FINISHED_IDS}{i:015d}" for i in range(n)]


async def floor_checks(
    redis_url: str, api_base: str, n: int, concurrency: int, api_concurrency: int
) -> int:
    """N checks with no job system: ``concurrency`` lanes take ids from one list; each check is
    one GET (at most ``api_concurrency`` at once, like the worker's api_slots) and one EVALSHA."""
    from api_client.client import STATUS_FIELDS, make_session

    redis = Redis.from_url(redis_url)
    write = redis.register_script(FLOOR_LUA)
    await redis.script_load(FLOOR_LUA)  # so that every check is one EVALSHA, none a NOSCRIPT
    api_slots = asyncio.Semaphore(api_concurrency)
    todo = iter(floor_ids(n))
    params = {"fields": STATUS_FIELDS, "access_token": TOKEN}
    errors = 0
    # The worker's session: same connector limit (WORKER_MAX_JOBS), keep-alive, no cookie jar.
    async with make_session(timeout_seconds=10.0, max_connections=concurrency) as http:

        async def lane() -> None:
            nonlocal errors
            for cid in todo:  # shared: each id is taken by exactly one lane
                try:
                    async with api_slots, http.get(f"{api_base}/{cid}", params=params) as resp:
                        body = await resp.read()
                    status = json.loads(body)["status"]
                    await write(
                        keys=[f"{FLOOR_PREFIX}:result:{cid}", FLOOR_DONE],
                        args=[status, time.time(), 86_400, cid],
                    )
                except Exception as exc:  # counted and reported; the count shows it as not done
                    errors += 1
                    if errors <= 5:
                        print(f"floor check {cid} failed: {exc!r}", file=sys.stderr, flush=True)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    await redis.aclose()
    print(f"floor: {n} checks, {errors} failed", flush=True)
    return 1 if errors else 0


def run_floor_worker(
    redis_url: str, api_base: str, n: int, concurrency: int, api_concurrency: int, loop: str
) -> int:
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(floor_checks(redis_url, api_base, n, concurrency, api_concurrency))


# ----- measurement helpers -------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # monotonic
    done: int
    cpu: float  # CPU seconds so far of the process(es) under test, summed
    redis_cpu: float  # CPU seconds of redis-server so far
    sim_cpu: float = 0.0  # CPU seconds of the simulator so far
    busy: float = 0.0  # busy CPU seconds of the whole machine so far, all cores


# The CPU counters of a Sample, for Progress.ms_per_item and Progress.core_pct.
CPU_FIELDS = ("cpu", "redis_cpu", "sim_cpu", "busy")


@dataclass
class Progress:
    n: int
    spawned: float
    samples: list[Sample] = field(default_factory=list)
    polls: int = 0

    def at(self, count: float) -> Sample | None:
        return next((s for s in self.samples if s.done >= count), None)

    @property
    def done(self) -> int:
        return self.samples[-1].done if self.samples else 0

    def _steady(self) -> tuple[Sample, Sample] | None:
        """The samples at 10 % and 90 % done: no start-up, no tail."""
        a, b = self.at(0.1 * self.n), self.at(0.9 * self.n)
        if a is None or b is None or b.t <= a.t or b.done <= a.done:
            return None
        return a, b

    @property
    def steady_rate(self) -> float | None:
        ab = self._steady()
        return None if ab is None else (ab[1].done - ab[0].done) / (ab[1].t - ab[0].t)

    def _cpu_delta(self, what: str) -> tuple[float, float, int] | None:
        """(CPU seconds, wall seconds, items) between 10 % and 90 % done."""
        assert what in CPU_FIELDS
        ab = self._steady()
        if ab is None:
            return None
        a, b = ab
        return float(getattr(b, what) - getattr(a, what)), b.t - a.t, b.done - a.done

    def ms_per_item(self, what: str) -> float | None:
        """CPU milliseconds of one counter (a CPU_FIELDS name) per item, 10 % to 90 % done."""
        d = self._cpu_delta(what)
        return None if d is None else 1000 * d[0] / d[2]

    def core_pct(self, what: str) -> float | None:
        """CPU of one counter in % of one core, 10 % to 90 % done."""
        d = self._cpu_delta(what)
        return None if d is None else 100 * d[0] / d[1]

    @property
    def cpu_ms_per_item(self) -> float | None:
        """CPU time of the process(es) under test per item, between 10 % and 90 % done."""
        return self.ms_per_item("cpu")

    @property
    def redis_cpu_ms_per_item(self) -> float | None:
        return self.ms_per_item("redis_cpu")

    @property
    def full_rate(self) -> float | None:
        """Items per second from the first one seen done to the last."""
        first = next((s for s in self.samples if s.done > 0), None)
        end = self.at(self.n)
        if first is None or end is None or end.t <= first.t:
            return None
        return (self.n - first.done) / (end.t - first.t)

    @property
    def wall(self) -> float | None:
        end = self.at(self.n)
        return None if end is None else end.t - self.spawned


async def track(
    count: Callable[[], Awaitable[int]],
    n: int,
    *,
    spawned: float,
    children: Sequence[Child],
    redis_pid: int,
    sim_pid: int,
    limit_s: float,
) -> Progress:
    """Sample progress and CPU every 20 ms until n are done, a child exits, or limit_s."""
    prog = Progress(n, spawned)
    deadline = time.monotonic() + limit_s
    while True:
        c = await count()
        prog.polls += 1
        prog.samples.append(
            Sample(
                time.monotonic(),
                c,
                sum(cpu_seconds(child.pid) or 0.0 for child in children),
                cpu_seconds(redis_pid) or 0.0,
                cpu_seconds(sim_pid) or 0.0,
                machine_cpu_seconds()[0],
            )
        )
        if c >= n or not all(child.alive() for child in children) or time.monotonic() > deadline:
            return prog
        await asyncio.sleep(0.02)


@dataclass
class RedisDelta:
    reads: int
    commands: dict[str, int]


async def redis_counters(r: Redis) -> tuple[int, dict[str, int]]:
    stats = await r.info("stats")
    cmds = await r.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in cmds.items()
        if isinstance(v, dict)
    }
    return int(stats["total_reads_processed"]), calls


def counters_delta(
    before: tuple[int, dict[str, int]], after: tuple[int, dict[str, int]], own_reads: int
) -> RedisDelta:
    reads = after[0] - before[0] - own_reads
    cmds = {k: v - before[1].get(k, 0) for k, v in after[1].items()}
    return RedisDelta(reads, {k: v for k, v in cmds.items() if v > 0})


# Commands this script itself sends while it watches (not the worker's).
OWN_COMMANDS = ("info", "xlen", "xrange", "zcard", "ping", "rename")


def describe_commands(delta: RedisDelta, per: int) -> str:
    shown = sorted(
        ((k, v) for k, v in delta.commands.items() if k not in OWN_COMMANDS),
        key=lambda kv: -kv[1],
    )
    return ", ".join(f"{k} {v / per:.2f}" for k, v in shown if v / per >= 0.005)


def worker_commands_total(delta: RedisDelta) -> int:
    return sum(v for k, v in delta.commands.items() if k not in OWN_COMMANDS)


# ----- the bench ----------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    n: int
    capacity_n: int
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
class DrainRun:
    """What Bench.drain measured: N FINISHED containers, drained by one or more workers."""

    workers: list[Child]
    ids: list[str]
    prog: Progress
    delta: RedisDelta
    calls: dict[str, Any]
    cpu: str  # Bench.cpu_line over the run
    rss_kib: int | None  # VmRSS of the first worker at the end


class Bench:
    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
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
        redis_child, self.redis_url = await start_redis(self.tmp)
        self.children.append(redis_child)
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
        cmd = [str(BIN / "threads-poller"), "worker"]
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
            str(BIN / "py-spy"), "record", "--pid", str(child.pid), "--rate", "100",
            "--format", "raw", "--output", str(raw),
        ]  # fmt: skip
        prof = spawn("py-spy", cmd, self.tmp / f"py-spy-{label}.log", cwd=self.tmp)
        out(f"  profiling the worker with py-spy -> {raw}")
        return prof

    # --- phases

    async def phase_noop(self) -> None:
        from arq.jobs import serialize_job

        n, f = self.cfg.n, self.figures
        out(f"\n[noop] bare arq: {n} no-op jobs, max_jobs={self.cfg.max_jobs}, same poll_delay")
        await self.reset()
        now_ms = int(time.time() * 1000)
        payload = serialize_job("noop", (), {}, None, now_ms)
        for i in range(0, n, 5000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for j in range(i, min(n, i + 5000)):
                    job_id = f"noop:{j}"
                    pipe.psetex(ARQ_JOB_PREFIX + job_id, JOB_EXPIRY_MS, payload)
                    pipe.zadd(NOOP_QUEUE, {job_id: now_ms})
                await pipe.execute()
        before = await redis_counters(self.redis)
        cmd = [
            sys.executable, "-m", "bench.bench", "--role", "noop-worker",
            "--redis-url", self.redis_url, "--max-jobs", str(self.cfg.max_jobs),
            "--poll-delay", str(self.poll_delay(60.0)),
        ]  # fmt: skip
        spawned = time.monotonic()
        child = spawn("noop-worker", cmd, self.tmp / "noop-worker.log", env=clean_env(), cwd=REPO)
        cpu0 = self.cpu_snapshot(child)

        async def count() -> int:
            return n - int(await self.redis.zcard(NOOP_QUEUE))

        prog = await track(
            count, n, spawned=spawned, children=[child], redis_pid=self.redis_pid,
            sim_pid=self.sim_pid, limit_s=max(120.0, n / 100),
        )  # fmt: skip
        cpu1 = self.cpu_snapshot(child)
        after = await redis_counters(self.redis)
        child.stop()
        delta = counters_delta(before, after, own_reads=prog.polls + 1)
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
        before = await redis_counters(self.redis)
        cmd = [
            sys.executable, "-m", "bench.bench", "--role", "floor-worker",
            "--redis-url", self.redis_url, "--api-url", self.sim_base, "--n", str(n),
            "--max-jobs", str(cfg.max_jobs), "--api-concurrency", str(api_slots),
            "--event-loop", loop,
        ]  # fmt: skip
        spawned = time.monotonic()
        child = spawn("floor", cmd, self.tmp / "floor.log", env=clean_env(), cwd=REPO)
        cpu0 = self.cpu_snapshot(child)

        async def count() -> int:
            return int(await self.redis.zcard(FLOOR_DONE))

        prog = await track(
            count, n, spawned=spawned, children=[child], redis_pid=self.redis_pid,
            sim_pid=self.sim_pid, limit_s=max(120.0, n / 100),
        )  # fmt: skip
        cpu1 = self.cpu_snapshot(child)
        after = await redis_counters(self.redis)
        for _ in range(500):  # it exits by itself once its last check is written
            if not child.alive():
                break
            await asyncio.sleep(0.02)
        code = child.stop()
        calls = await self.sim("GET", "/calls")
        delta = counters_delta(before, after, own_reads=prog.polls + 1)
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

    def cpu_snapshot(self, *workers: Child) -> dict[str, tuple[float, float]]:
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

    async def drain(self, label: str, workers: int, *, hold: bool) -> DrainRun:
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
                self.worker_env(EVENTS_MAX_LEN=str(max(100_000, 2 * n))),
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
            count, n, spawned=spawned, children=children, redis_pid=self.redis_pid,
            sim_pid=self.sim_pid, limit_s=max(180.0, n / 50),
        )  # fmt: skip
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

    async def phase_schedule(self) -> None:
        from worker.client.producer import enqueue_many
        from worker.core.decisions import Schedule
        from worker.store.keys import Keys

        f, keys = self.figures, Keys(PREFIX)
        schedule = Schedule(SCHEDULE_INTERVAL, SCHEDULE_WINDOW)
        max_rate = self.cfg.half_rate
        if max_rate is None:
            max_rate = f.check_rate / 2 if f.check_rate else 100.0
        per_second = max_rate / schedule.max_checks
        duration = self.cfg.schedule_seconds
        total = max(1, round(per_second * duration))
        f.sched_target_rate, f.expected_checks = max_rate, schedule.max_checks
        out(
            f"\n[schedule] {max_rate:.0f} checks/s (half the measured maximum): "
            f"{per_second:.1f} containers/s for {duration:.0f} s = {total} containers, "
            f"IN_PROGRESS, interval {SCHEDULE_INTERVAL:g} s, window {SCHEDULE_WINDOW:g} s "
            f"({schedule.max_checks} checks each); each id enqueued twice more while polled"
        )
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
            count, total, spawned=t0, children=[child], redis_pid=self.redis_pid,
            sim_pid=self.sim_pid, limit_s=SCHEDULE_WINDOW + 60.0,
        )  # fmt: skip
        cpu1 = self.cpu_snapshot(child)
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

    async def phase_capacity(self) -> None:
        from worker.store.keys import ARQ_JOB_PREFIX as JOB_PREFIX
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
        job_key = JOB_PREFIX + keys.job_id(sample[0], gen.decode() if gen else "")
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

    # --- report

    def summary(self, started: datetime.datetime) -> None:
        f, cfg = self.figures, self.cfg
        ratio = f.check_rate / f.noop_rate if f.check_rate and f.noop_rate else None
        floor_ratio = f.check_rate / f.floor_rate if f.check_rate and f.floor_rate else None
        rows: list[tuple[str, str, str, str]] = []

        def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
            rows.append((name, value, target, "" if not target else verdict(ok)))

        def le(value: float | None, limit: float) -> bool | None:
            return None if value is None or math.isnan(value) else value <= limit

        def pair(a: float | None, b: float | None, spec: str, unit: str = "") -> str:
            return f"{fmt(a, spec)} / {fmt(b, spec)}{unit}"

        row(
            "checks/s, one worker (10-90 %)",
            fmt(f.check_rate),
            f">= {TARGET_RATIO} x bare arq",
            None if ratio is None else ratio >= TARGET_RATIO,
        )
        row("bare arq no-op jobs/s (10-90 %)", fmt(f.noop_rate))
        row("ratio ours / bare arq", fmt(ratio, ".2f"))
        row("floor checks/s, GET + EVALSHA, no job system", fmt(f.floor_rate))
        row("ratio ours / floor", fmt(floor_ratio, ".2f"))
        row(
            "floor CPU ms per check: process / redis-server",
            pair(f.floor_cpu_ms, f.floor_redis_cpu_ms, ".3f"),
        )
        row("worker CPU ms per check / per no-op job", pair(f.check_cpu_ms, f.noop_cpu_ms, ".3f"))
        row(
            "redis CPU ms per check / per no-op job",
            pair(f.check_redis_cpu_ms, f.noop_redis_cpu_ms, ".3f"),
        )
        row(
            "Redis round trips per check / per no-op job",
            pair(f.reads_per_check, f.noop_reads_per_job, ".2f"),
        )
        row(
            "Redis commands per check / per no-op job",
            pair(f.cmds_per_check, f.noop_cmds_per_job, ".2f"),
        )
        row(
            "Redis bytes per queued container",
            fmt(f.bytes_per_container),
            f"<= {TARGET_BYTES_PER_CONTAINER}",
            le(f.bytes_per_container, TARGET_BYTES_PER_CONTAINER),
        )
        row("Redis bytes per container once checked", fmt(f.bytes_per_checked_container))
        row("enqueue_many containers/s", fmt(f.enqueue_rate))
        row(
            f"lateness p99 at {fmt(f.sched_target_rate)} checks/s",
            fmt(f.late_p99, ".3f") + " s",
            f"<= {TARGET_P99_LATENESS_S:g} s",
            le(f.late_p99, TARGET_P99_LATENESS_S),
        )
        row("lateness p50 / max", pair(f.late_p50, f.late_max, ".3f", " s"))
        row(
            "worker lag_s p50 / p99 / max",
            f"{fmt(f.lag_p50, '.3f')} / {pair(f.lag_p99, f.lag_max, '.3f', ' s')}",
        )
        in_flight = fmt(f.capacity_in_flight, "d") if f.capacity_in_flight else "n/a"
        row(
            f"worker RSS, {in_flight} in flight",
            fmt(f.rss_100k_mib, ".1f") + " MiB",
            f"<= {TARGET_RSS_MIB:g} MiB",
            le(f.rss_100k_mib, TARGET_RSS_MIB),
        )
        row("worker RSS after the throughput run", fmt(f.rss_end_throughput_mib, ".1f") + " MiB")
        row("worker RSS idle", fmt(f.rss_idle_mib, ".1f") + " MiB")
        calls = f.calls_per_container_throughput
        row(
            "API calls per container (FINISHED)",
            fmt(calls, ".3f"),
            "1",
            None if calls is None else calls == 1.0,
        )
        row(
            f"API calls per container (IN_PROGRESS, max {fmt(f.expected_checks, 'd')})",
            fmt(f.calls_per_container_schedule, ".3f"),
        )
        extra = f.extra_calls_duplicates
        row(
            "extra calls from duplicate enqueues",
            "n/a" if extra is None else str(extra),
            "0",
            None if extra is None else extra == 0,
        )
        self.scale_rows(row)
        variant = []
        if cfg.log_level.upper() != "INFO":
            variant.append(f"LOG_LEVEL={cfg.log_level}")
        variant += [f"{k}={v}" for k, v in cfg.worker_env.items()]
        out("\n" + "=" * 100)
        out(
            f"SUMMARY  {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores shared by the "
            f"worker(s), the simulator, redis-server and this script; "
            f"{'--quick' if cfg.quick else 'default'} run (N {cfg.n}); worker: "
            f"{', '.join(variant) or 'defaults'} (event loop {event_loop(cfg.worker_env)}, "
            f"max_jobs {cfg.max_jobs}); bare arq on asyncio"
        )
        out("=" * 100)
        width = max(len(r[0]) for r in rows)
        for name, value, target, ok in rows:
            out(f"{name:<{width}}  {value:>24}  {target:<22} {ok}".rstrip())
        for note in dict.fromkeys(f.notes):
            out(f"note: {note}")
        out("=" * 100)

    def scale_rows(self, row: Callable[..., None]) -> None:
        """The scale phase's lines of the summary (none when it did not run)."""
        runs = self.figures.scale
        if not runs:
            return
        for r in runs:
            plural = "s" if r.workers > 1 else ""
            row(f"checks/s, {r.workers} worker{plural} (scale, 10-90 %)", fmt(r.rate))
        base = runs[0]
        for r in runs[1:]:
            speedup = r.rate / base.rate if r.rate and base.rate else None
            row(f"speed-up {r.workers}w/{base.workers}w", fmt(speedup, ".2f"))
        label = " / ".join(f"{r.workers}w" for r in runs)
        row(
            f"worker CPU ms per check, {label}",
            " / ".join(fmt(r.worker_cpu_ms, ".3f") for r in runs),
        )
        row(f"redis-server % of a core, {label}", " / ".join(fmt(r.redis_pct) for r in runs))
        row(f"simulator % of a core, {label}", " / ".join(fmt(r.sim_pct) for r in runs))
        row(f"machine busy % ({os.cpu_count()} cores), {label}",
            " / ".join(fmt(r.machine_pct) for r in runs))  # fmt: skip
        row(
            f"scale: FINISHED exactly once, of {runs[0].n}",
            " / ".join(str(r.finished_once) for r in runs),
            "all",
            all(r.finished_once == r.n and r.events == r.n for r in runs),
        )
        row(
            "scale: API calls per container",
            " / ".join(f"{r.calls_per_container:.3f}" for r in runs),
            "1",
            all(r.calls_per_container == 1.0 and r.wrong_calls == 0 for r in runs),
        )


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


async def run(cfg: Config) -> None:
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="threads-poller-bench-"))
    out(
        f"threads-poller bench, {started:%Y-%m-%d %H:%M:%S} UTC; {platform.node()}: "
        f"{os.cpu_count()} cores, {mem_total_mib()} MiB, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    out(
        f"All processes (worker, simulator, redis-server, this script) share these "
        f"{os.cpu_count()} cores: figures are for this box, not for a worker with a core to "
        "itself."
    )
    out(f"code: {code_version()}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    out(f"load average at start: {load}; work dir (logs): {tmp}")
    try:
        async with Bench(cfg, tmp) as bench:
            info = await bench.redis.info("server")
            out(
                f"redis-server {info['redis_version']} on {bench.redis_url} (AOF off, no RDB); "
                f"simulator {bench.sim_base} (pid {bench.child('simulator').pid})"
            )
            phases: dict[str, Callable[[], Awaitable[None]]] = {
                "noop": bench.phase_noop,
                "floor": bench.phase_floor,
                "throughput": bench.phase_throughput,
                "schedule": bench.phase_schedule,
                "capacity": bench.phase_capacity,
                "scale": bench.phase_scale,
            }
            for name in cfg.phases:
                try:
                    await phases[name]()
                except Exception as exc:  # a report: say what broke and go on
                    bench.figures.notes.append(f"{name} phase failed: {exc!r}")
                    out(f"  ! {name} phase failed: {exc!r}")
            bench.summary(started)
    finally:
        if cfg.keep:
            out(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench",
        description="threads-poller performance report (throughput vs bare arq and vs the floor "
        "of a check with no job system, scaling over 1-3 workers, capacity, schedule accuracy). "
        "Always exits 0.",
    )
    p.add_argument("--quick", action="store_true", help="smaller N (3,000 / 20,000), ~1 min")
    p.add_argument(
        "--n", type=int, help="containers (and no-op jobs, floor checks) of the throughput runs"
    )
    p.add_argument("--capacity-n", type=int, help="containers queued in the capacity phase")
    p.add_argument(
        "--phases",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated, of {', '.join(ALL_PHASES)} (default {','.join(DEFAULT_PHASES)})",
    )
    p.add_argument("--schedule-seconds", type=float, help="enqueue duration of the schedule phase")
    p.add_argument(
        "--schedule-rate",
        type=float,
        help="checks/s of the schedule phase (default: half the measured checks/s)",
    )
    p.add_argument(
        "--scale-workers",
        default="1,2,3",
        metavar="K[,K]",
        help="worker processes at once in each run of the scale phase (default 1,2,3)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        help="LOG_LEVEL of the worker (default INFO: final states only; DEBUG: every check)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra worker setting, e.g. EVENT_LOOP=asyncio (the default is uvloop)",
    )
    p.add_argument("--max-jobs", type=int, default=200, help="WORKER_MAX_JOBS, and arq max_jobs")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the throughput worker")
    p.add_argument("--keep", action="store_true", help="keep the work dir with all logs")
    # Internal: the subprocesses this script starts.
    p.add_argument("--role", default="bench", choices=["bench", "noop-worker", "floor-worker"],
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--api-url", help=argparse.SUPPRESS)
    p.add_argument("--api-concurrency", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"],
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--poll-delay", type=float, default=0.2, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "noop-worker":
        return run_noop_worker(args.redis_url, args.max_jobs, args.poll_delay)
    if args.role == "floor-worker":
        return run_floor_worker(
            args.redis_url, args.api_url, args.n, args.max_jobs, args.api_concurrency,
            args.event_loop,
        )  # fmt: skip
    parser = build_parser()
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = [p for p in phases if p not in ALL_PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; known: {list(ALL_PHASES)}")
    try:
        scale_workers = tuple(int(k) for k in args.scale_workers.split(",") if k.strip())
    except ValueError:
        parser.error(f"--scale-workers: comma-separated counts, not {args.scale_workers!r}")
    if not scale_workers or min(scale_workers) < 1:
        parser.error("--scale-workers: at least one count, each >= 1")
    bad_env = [kv for kv in args.worker_env if "=" not in kv]
    if bad_env:
        parser.error(f"--worker-env takes K=V, not {bad_env}")
    env = dict(kv.split("=", 1) for kv in args.worker_env)
    cfg = Config(
        quick=args.quick,
        n=args.n or (3_000 if args.quick else 20_000),
        capacity_n=args.capacity_n or (20_000 if args.quick else 100_000),
        schedule_seconds=args.schedule_seconds or (10.0 if args.quick else 20.0),
        capacity_run_seconds=5.0 if args.quick else 10.0,
        phases=phases,
        scale_workers=scale_workers,
        log_level=args.log_level,
        worker_env=env,
        profile=args.profile,
        keep=args.keep,
        max_jobs=args.max_jobs,
        half_rate=args.schedule_rate,
    )
    signal.signal(signal.SIGTERM, _terminate)
    try:
        asyncio.run(run(cfg))
    finally:
        for child in reversed(_SPAWNED):
            child.stop(timeout=10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
