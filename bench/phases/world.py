"""The bench's world: ``Bench`` owns one private redis-server, the simulator
(``threads-poller simulate``) and the worker processes it starts, and the measurements every
phase takes of them (a drain of N containers, a measured subprocess, CPU snapshots). The phases
themselves (bench/phases/*.py, one module per family) are functions of a ``Bench`` that fill in
its ``Figures``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.baselines import FINISHED_IDS, FLOOR_DONE, TOKEN
from bench.harness import (
    Child,
    cpu_seconds,
    free_port,
    machine_cpu_seconds,
    proc_status_kib,
    threads_poller_command,
)
from bench.measure import (
    MACHINE,
    STEAL,
    Progress,
    RedisDelta,
    counters_delta,
    out,
    redis_counters,
    track,
)
from bench.phases.figures import BIN, PREFIX, REPO, Config, CpuSnapshot, DrainRun, Figures
from bench.phases.processes import (
    api_max_concurrency,
    clean_env,
    event_loop,
    spawn,
    start_redis,
    start_simulator,
)


class Bench:
    """The redis-server, the simulator and the workers of one bench run (an async context),
    what the phases measure them with, and the ``Figures`` they fill in."""

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

    # --- measurements

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
