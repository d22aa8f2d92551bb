"""The ``scale`` phase: the throughput workload drained by 1, 2, 3... worker processes at once
(the queue held back until every worker is ready), the CPU of each process per check, and
whether every container still went FINISHED exactly once.
"""

from __future__ import annotations

import os

from bench.measure import fmt, out, worker_commands_total
from bench.phases.figures import ScaleRun
from bench.phases.world import Bench


async def phase_scale(bench: Bench) -> None:
    n, f = bench.cfg.n, bench.figures
    cores = os.cpu_count() or 1
    counts = bench.cfg.scale_workers
    out(
        f"\n[scale] the throughput workload ({n} containers, FINISHED on the first check) "
        f"drained by {', '.join(map(str, counts))} worker processes at once; {cores} cores"
    )
    out(
        "  per run: the queue is held back until every worker is ready, then released to "
        "all; figures from 10 % to 90 % of the events"
    )
    for k in counts:
        result = await _scale_run(bench, k, cores)
        f.scale.append(result)
        if not result.correct:
            f.notes.append(f"scale: {k} workers: not every container FINISHED exactly once")
    _scale_table(f.scale, counts, cores)


async def _scale_run(bench: Bench, k: int, cores: int) -> ScaleRun:
    """One run: ``k`` workers drain the workload; what they cost and whether it came out right."""
    n = bench.cfg.n
    procs = k + 2  # the workers, redis-server, the simulator (this script mostly waits)
    over = ": oversubscribed (more processes than cores)" if procs > cores else ""
    out(
        f"  -- {k} worker{'s' if k > 1 else ''} + redis-server + simulator = {procs} "
        f"processes on {cores} cores{over}"
    )
    run = await bench.drain(f"scale-{k}w", k, hold=True)
    prog = run.prog
    events = await bench.final_events()
    statuses = [events.get(cid, []) for cid in run.ids]
    containers = run.calls["containers"]
    wrong_calls = sum(1 for cid in run.ids if int(containers.get(cid, {}).get("count", 0)) != 1)
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
    return result


def _scale_table(runs: list[ScaleRun], counts: tuple[int, ...], cores: int) -> None:
    """The runs side by side, the speed-up over the first, and how to read them."""
    base = runs[0] if runs else None
    out(
        "  workers  checks/s  speed-up  worker ms/check  redis ms/check  redis %core  "
        "sim %core  machine busy"
    )
    for r in runs:
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
