"""The bench's summary: one table of every figure, with the targets of issue #6 and their
verdicts, printed at the end of a run."""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Sequence

from bench.measure import fmt, out, verdict
from bench.paced import TARGET_CPU_RATIO, TARGET_RUNS_PER_CHECK, PacedRun, cpu_ratio
from bench.phases import Config, Figures, HookRun, ScaleRun, event_loop

# Targets of issue #6.
TARGET_RATIO = 1.0  # issue 16: at least bare arq's no-op rate, in the same run
TARGET_BYTES_PER_CONTAINER = 1024
# Issue 23: what a 6-check poll's history may add (enqueue + 6 checks + final).
TARGET_HISTORY_BYTES = 400
TARGET_P99_LATENESS_S = 1.0
TARGET_RSS_MIB = 150.0
# Issue 22: hung webhook deliveries change no check's lateness (p99, with - without).
TARGET_HOOK_P99_DELTA_S = 0.1


def summary(f: Figures, cfg: Config, started: datetime.datetime) -> None:
    """The table at the end of a run: every figure, its target and verdict where it has one."""
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((name, value, target, "" if not target else verdict(ok)))

    throughput_rows(f, row)
    memory_rows(f, row)
    lateness_rows(f, row)
    worker_rows(f, row)
    row(
        "history bytes per 6-check poll",
        fmt(f.history_bytes),
        f"<= {TARGET_HISTORY_BYTES}",
        _le(f.history_bytes, TARGET_HISTORY_BYTES),
    )
    scale_rows(f.scale, row)
    hook_rows(f.hooks, row)
    paced_rows(f.paced, row, f.paced_floor)
    million_rows(f, row)
    print_table(rows, f.notes, cfg, started)


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None or math.isnan(value) else value <= limit


def _pair(a: float | None, b: float | None, spec: str, unit: str = "") -> str:
    return f"{fmt(a, spec)} / {fmt(b, spec)}{unit}"


def throughput_rows(f: Figures, row: Callable[..., None]) -> None:
    """One worker's checks/s against bare arq's and the floor's, and what a check costs."""
    ratio = f.check_rate / f.noop_rate if f.check_rate and f.noop_rate else None
    floor_ratio = f.check_rate / f.floor_rate if f.check_rate and f.floor_rate else None
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
        _pair(f.floor_cpu_ms, f.floor_redis_cpu_ms, ".3f"),
    )
    row("worker CPU ms per check / per no-op job", _pair(f.check_cpu_ms, f.noop_cpu_ms, ".3f"))
    row(
        "redis CPU ms per check / per no-op job",
        _pair(f.check_redis_cpu_ms, f.noop_redis_cpu_ms, ".3f"),
    )
    row(
        "Redis round trips per check / per no-op job",
        _pair(f.reads_per_check, f.noop_reads_per_job, ".2f"),
    )
    row(
        "Redis commands per check / per no-op job",
        _pair(f.cmds_per_check, f.noop_cmds_per_job, ".2f"),
    )


def memory_rows(f: Figures, row: Callable[..., None]) -> None:
    """The capacity phase's Redis bytes per container and enqueue rate."""
    row(
        "Redis bytes per queued container",
        fmt(f.bytes_per_container),
        f"<= {TARGET_BYTES_PER_CONTAINER}",
        _le(f.bytes_per_container, TARGET_BYTES_PER_CONTAINER),
    )
    row("Redis bytes per container once checked", fmt(f.bytes_per_checked_container))
    row("enqueue_many containers/s", fmt(f.enqueue_rate))


def lateness_rows(f: Figures, row: Callable[..., None]) -> None:
    """The schedule phase's lateness, the simulator's and the worker's own (lag_s)."""
    row(
        f"lateness p99 at {fmt(f.sched_target_rate)} checks/s",
        fmt(f.late_p99, ".3f") + " s",
        f"<= {TARGET_P99_LATENESS_S:g} s",
        _le(f.late_p99, TARGET_P99_LATENESS_S),
    )
    row("lateness p50 / max", _pair(f.late_p50, f.late_max, ".3f", " s"))
    row(
        "worker lag_s p50 / p99 / max",
        f"{fmt(f.lag_p50, '.3f')} / {_pair(f.lag_p99, f.lag_max, '.3f', ' s')}",
    )


def worker_rows(f: Figures, row: Callable[..., None]) -> None:
    """The worker's RSS, and its API calls per container (none wasted on duplicates)."""
    in_flight = fmt(f.capacity_in_flight, "d") if f.capacity_in_flight else "n/a"
    row(
        f"worker RSS, {in_flight} in flight",
        fmt(f.rss_100k_mib, ".1f") + " MiB",
        f"<= {TARGET_RSS_MIB:g} MiB",
        _le(f.rss_100k_mib, TARGET_RSS_MIB),
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


def million_rows(f: Figures, row: Callable[..., None]) -> None:
    """The million phase's lines of the summary (none when it did not run)."""
    if f.million_n is None:
        return
    row(
        f"million phase: Redis bytes per container ({fmt(f.million_n, 'd')} in flight)",
        fmt(f.million_bytes_per_container),
        f"<= {TARGET_BYTES_PER_CONTAINER}",
        _le(f.million_bytes_per_container, TARGET_BYTES_PER_CONTAINER),
    )
    enqueue_s = f.million_enqueue_s or math.nan
    row(
        "million phase: CLI enqueue time / containers per s",
        f"{fmt(enqueue_s, '.1f')} s / {fmt(f.million_n / enqueue_s)}",
    )
    row(
        "million phase: lateness p99 beside them",
        fmt(f.million_late_p99, ".3f") + " s",
        f"<= {TARGET_P99_LATENESS_S:g} s",
        _le(f.million_late_p99, TARGET_P99_LATENESS_S),
    )
    row("million phase: worker RSS at the end", fmt(f.million_rss_mib, ".1f") + " MiB")


def print_table(
    rows: list[tuple[str, str, str, str]],
    notes: list[str],
    cfg: Config,
    started: datetime.datetime,
) -> None:
    """The summary's header (the run and the worker's variant), its rows, then its notes."""
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
    for note in dict.fromkeys(notes):
        out(f"note: {note}")
    out("=" * 100)


def scale_rows(runs: list[ScaleRun], row: Callable[..., None]) -> None:
    """The scale phase's lines of the summary (none when it did not run)."""
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
    row(
        f"machine busy % ({os.cpu_count()} cores), {label}",
        " / ".join(fmt(r.machine_pct) for r in runs),
    )
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


def hook_rows(runs: list[HookRun], row: Callable[..., None]) -> None:
    """The webhooks phase's lines of the summary (none when it did not run)."""
    for r in runs:
        label = f"beside {r.deliveries} hung deliveries" if r.deliveries else "alone"
        row(
            f"check lateness p50 / p99, paced load {label}",
            f"{fmt(r.late_p50, '.3f')} / {fmt(r.late_p99, '.3f')} s",
        )
    if len(runs) == 2:
        delta = runs[1].late_p99 - runs[0].late_p99
        row(
            "check lateness p99, with - without hung deliveries",
            f"{delta:+.3f} s",
            f"<= {TARGET_HOOK_P99_DELTA_S:g} s",
            None if math.isnan(delta) else delta <= TARGET_HOOK_P99_DELTA_S,
        )


def paced_rows(
    runs: list[PacedRun], row: Callable[..., None], floors: Sequence[float | None] = ()
) -> None:
    """The paced phase's lines of the summary (none when it did not run)."""
    by = {r.label: r for r in runs}
    paced = by.get("paced")
    if paced is None:
        return
    burst, trickle = by.get("burst"), by.get("trickle")
    row(
        "worker CPU ms per container, paced / burst / trickle",
        " / ".join(
            fmt(r.cpu_ms_per_container if r else None, ".3f") for r in (paced, burst, trickle)
        ),
    )
    ratio = cpu_ratio(paced, burst)
    row(
        f"paced CPU per container / burst's ({paced.rate:g}/s per account)",
        fmt(ratio, ".2f"),
        f"<= {TARGET_CPU_RATIO:g}",
        None if ratio is None else ratio <= TARGET_CPU_RATIO,
    )
    row("paced CPU per container / trickle's (same rate)", fmt(cpu_ratio(paced, trickle), ".2f"))
    if len(floors) == 2 and floors[0] and floors[1]:
        # The control (bench/paced.py): the floor's own cost of running at the paced rate.
        row("floor CPU per check at the paced rate / all at once", f"{floors[1] / floors[0]:.2f}")
    row(
        "job runs per check, paced",
        fmt(paced.runs_per_check, ".3f"),
        f"<= {TARGET_RUNS_PER_CHECK:g}",
        None if paced.runs_per_check is None else paced.runs_per_check <= TARGET_RUNS_PER_CHECK,
    )
