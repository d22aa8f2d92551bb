"""Measuring a bench phase: progress and CPU sampled every 20 ms, the figures between 10 % and
90 % done (no start-up, no tail), Redis's own counters before and after, and number formatting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bench.harness import Child, cpu_seconds, machine_cpu_seconds

# ----- printing and numbers ----------------------------------------------------------------------


def out(text: str = "") -> None:
    print(text, flush=True)


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


# ----- progress and CPU over a run ---------------------------------------------------------------


MACHINE = "machine"
STEAL = "steal"


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


# ----- Redis's counters --------------------------------------------------------------------------


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
