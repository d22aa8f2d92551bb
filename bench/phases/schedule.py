"""The ``schedule`` phase: checks at half the measured maximum rate (Poisson arrivals, each id
enqueued twice more while it is polled), and how late each check came, as the simulator saw it
and as the worker logged it. The million phase runs it again beside a million polls
(``fresh=False``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Child, proc_status_kib
from bench.measure import Progress, fmt, out, percentile, track
from bench.phases.figures import PREFIX, SCHEDULE_IDS, Figures
from bench.phases.world import Bench

# The schedule phase's compressed window: checks at 0, 1, 2, 3, 4 s (5 per container).
SCHEDULE_INTERVAL = 1.0
SCHEDULE_WINDOW = 4.0
REENQUEUE_AFTER = (1.5, 2.5)  # seconds after its first enqueue, each id goes in again


@dataclass
class _Lateness:
    """What the simulator saw of one run's checks: each container's first check's lateness
    (arrival - enqueued_at), the later ones' (arrival - previous arrival - interval), and the
    status calls made and checks recorded."""

    first: list[float] = field(default_factory=list)
    later: list[float] = field(default_factory=list)
    calls: int = 0
    checks: int = 0

    @property
    def all(self) -> list[float]:
        return self.first + self.later


async def phase_schedule(bench: Bench, *, fresh: bool = True) -> tuple[float, float, float]:
    """The lateness run; ``fresh`` False: on top of what Redis holds (the million phase),
    without touching the schedule phase's figures. Returns lateness p50, p99, max."""
    from worker.core.decisions import Schedule
    from worker.store.keys import Keys

    f, keys = (bench.figures if fresh else Figures()), Keys(PREFIX)
    schedule = Schedule(SCHEDULE_INTERVAL, SCHEDULE_WINDOW)
    per_second, total = _plan(bench, f, schedule.max_checks, fresh)
    settings, child = await _start_worker(bench, f, fresh)
    ids = [f"{SCHEDULE_IDS}{i:015d}" for i in range(total)]
    cpu0 = bench.cpu_snapshot(child)
    t0 = time.monotonic()
    dup_sent, dup_refused = await _enqueue_arrivals(bench, ids, per_second, settings, t0)

    async def count() -> int:
        return int(await bench.redis.xlen(keys.events))

    prog = await track(
        count,
        total,
        spawned=t0,
        children=[child],
        redis_pid=bench.redis_pid,
        sim_pid=bench.sim_pid,
        limit_s=SCHEDULE_WINDOW + 60.0,
    )
    cpu1 = bench.cpu_snapshot(child)
    rss_end = proc_status_kib(child.pid, "VmRSS")
    bench.last_rss_mib = None if rss_end is None else rss_end / 1024
    child.stop()
    late = await _lateness(bench, ids)
    lags = worker_lags(child.log)
    f.duplicates_sent, f.duplicates_refused = dup_sent, dup_refused
    elapsed = _record(f, late, lags, prog, total, t0)
    out(f"  all final: {prog.done}/{total}; {late.calls} status calls in {elapsed:.1f} s")
    _report(bench, f, late, lags, schedule.max_checks)
    out(f"  CPU during the phase: {bench.cpu_line(cpu0, cpu1)}")
    late_all = late.all
    return (
        percentile(late_all, 50),
        percentile(late_all, 99),
        max(late_all, default=math.nan),
    )


def _plan(bench: Bench, f: Figures, max_checks: int, fresh: bool) -> tuple[float, int]:
    """The run's rate (``--half-rate``, else half the throughput phase's): containers a second
    and how many in all, said in the phase's header."""
    max_rate = bench.cfg.half_rate
    if max_rate is None:
        rate = bench.figures.check_rate  # the throughput phase's, when it ran
        max_rate = rate / 2 if rate else 100.0
    per_second = max_rate / max_checks
    duration = bench.cfg.schedule_seconds
    total = max(1, round(per_second * duration))
    f.sched_target_rate, f.expected_checks = max_rate, max_checks
    out(
        f"\n[schedule{'' if fresh else ', beside them'}] {max_rate:.0f} checks/s "
        "(half the measured maximum): "
        f"{per_second:.1f} containers/s for {duration:.0f} s = {total} containers, "
        f"IN_PROGRESS, interval {SCHEDULE_INTERVAL:g} s, window {SCHEDULE_WINDOW:g} s "
        f"({max_checks} checks each); each id enqueued twice more while polled"
    )
    return per_second, total


async def _start_worker(bench: Bench, f: Figures, fresh: bool) -> tuple[Any, Child]:
    """A worker on the compressed window, ready and idle (its RSS then): the producer's
    settings to match, and the worker."""
    if fresh:
        await bench.reset()
    settings = bench.settings(
        poll_interval_seconds=SCHEDULE_INTERVAL, poll_max_seconds=SCHEDULE_WINDOW
    )
    env = bench.worker_env(
        POLL_INTERVAL_SECONDS=str(SCHEDULE_INTERVAL), POLL_MAX_SECONDS=str(SCHEDULE_WINDOW)
    )
    child = bench.spawn_worker("schedule", env)
    await bench.wait_ready(child)
    await asyncio.sleep(0.5)
    rss_idle = proc_status_kib(child.pid, "VmRSS")
    f.rss_idle_mib = None if rss_idle is None else rss_idle / 1024
    return settings, child


async def _enqueue_arrivals(
    bench: Bench, ids: list[str], per_second: float, settings: Any, t0: float
) -> tuple[int, int]:
    """Enqueue ``ids`` at ``per_second`` from ``t0``, each again REENQUEUE_AFTER its first
    enqueue: the duplicate enqueues sent, and how many were answered ``duplicate``."""
    from worker.client.producer import enqueue_many

    total = len(ids)
    # Arrivals at random (Poisson) times: nothing lines up with arq's poll period.
    rng = random.Random(6)
    arrivals = list(itertools.accumulate(rng.expovariate(per_second) for _ in ids))
    redo: list[tuple[float, int, list[str]]] = []  # heap of (time, seq, ids) to enqueue again
    dup_sent = dup_refused = sent = seq = 0
    while sent < total or redo:
        now = time.monotonic() - t0
        upto = bisect.bisect_right(arrivals, now, lo=sent)
        if upto > sent:
            batch = ids[sent:upto]
            await enqueue_many(bench.redis, batch, settings=settings)
            sent = upto
            for after in REENQUEUE_AFTER:
                seq += 1
                heapq.heappush(redo, (now + after, seq, batch))
        while redo and redo[0][0] <= now:
            _, _, batch = heapq.heappop(redo)
            outcomes = await enqueue_many(bench.redis, batch, settings=settings)
            dup_sent += len(outcomes)
            dup_refused += sum(o.outcome == "duplicate" for o in outcomes)
        if sent >= total and not redo:
            break
        wake = min(arrivals[sent] if sent < total else math.inf, redo[0][0] if redo else math.inf)
        await asyncio.sleep(max(0.0, wake - (time.monotonic() - t0)))
    return dup_sent, dup_refused


async def _lateness(bench: Bench, ids: list[str]) -> _Lateness:
    """The simulator's arrival times of each container's checks against its enqueued_at."""
    from worker.store.keys import Keys

    keys = Keys(PREFIX)
    calls = (await bench.sim("GET", "/calls"))["containers"]
    async with bench.redis.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.hmget(keys.result(cid), ["enqueued_at", "checks", "status"])
        rows = await pipe.execute()
    late = _Lateness()
    for cid, (enq, checks, _status) in zip(ids, rows, strict=True):
        times = sorted(calls.get(cid, {}).get("times", []))
        late.calls += len(times)
        late.checks += int(checks or 0)
        if not times or enq is None:
            continue
        late.first.append(times[0] - float(enq))
        late.later += [b - a - SCHEDULE_INTERVAL for a, b in itertools.pairwise(times)]
    return late


def _record(
    f: Figures, late: _Lateness, lags: list[float], prog: Progress, total: int, t0: float
) -> float:
    """The run's figures; returns the seconds from the first enqueue to the last final."""
    late_all = late.all
    f.late_p50, f.late_p99, f.late_max = (
        percentile(late_all, 50),
        percentile(late_all, 99),
        max(late_all, default=math.nan),
    )
    if lags:
        f.lag_p50, f.lag_p99, f.lag_max = percentile(lags, 50), percentile(lags, 99), max(lags)
    f.calls_per_container_schedule = late.calls / total
    f.extra_calls_duplicates = late.calls - late.checks
    end = prog.at(total)
    elapsed = (end.t if end else time.monotonic()) - t0
    f.sched_actual_rate = late.calls / max(elapsed, 1e-9)
    return elapsed


def _report(bench: Bench, f: Figures, late: _Lateness, lags: list[float], max_checks: int) -> None:
    """The run's lateness, both sides, its calls per container and its duplicate enqueues."""
    out(
        "  lateness, simulator side (request arrival - due; due = enqueued_at for check 1, "
        "previous arrival + interval after):"
    )
    for label, values in (("all", late.all), ("1st", late.first), ("later", late.later)):
        out(
            f"    {label:5} n={len(values):6}  p50 {fmt(percentile(values, 50), '.3f')} s  "
            f"p99 {fmt(percentile(values, 99), '.3f')} s  "
            f"max {fmt(max(values, default=math.nan), '.3f')} s"
        )
    which = "every check" if bench.cfg.log_level.upper() == "DEBUG" else "final checks only"
    out(
        f"  lateness, worker side (lag_s of its log lines, {which} at LOG_LEVEL "
        f"{bench.cfg.log_level}: run start - next_check_at): n={len(lags)}  "
        f"p50 {fmt(f.lag_p50, '.3f')} s  p99 {fmt(f.lag_p99, '.3f')} s  "
        f"max {fmt(f.lag_max, '.3f')} s"
    )
    out(
        f"  API calls per container: {f.calls_per_container_schedule:.3f} "
        f"(expected {max_checks}); checks recorded {late.checks}; "
        f"calls beyond recorded checks: {f.extra_calls_duplicates}"
    )
    out(
        f"  duplicate enqueues: {f.duplicates_sent} sent while polling, {f.duplicates_refused} "
        "answered 'duplicate' (no new job, no call)"
    )


def worker_lags(log: Path) -> list[float]:
    """The ``lag_s`` of the worker's JSON log lines (run start - next_check_at), stale runs
    left out."""
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
