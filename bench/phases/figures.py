"""The bench's configuration, the figures its phases fill in, the records of their runs, and
the names more than one phase (or the bench's world) shares.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Child
from bench.measure import Progress, RedisDelta
from bench.paced import PacedRun

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFIX = "bench"

# Container id prefixes, one per scripted behaviour of the simulator (FINISHED_IDS: baselines).
SCHEDULE_IDS = "7"  # IN_PROGRESS forever: every container uses all its checks
CAPACITY_IDS = "6"  # IN_PROGRESS forever

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


# Per process name: (monotonic time, CPU seconds so far) at one instant.
CpuSnapshot = dict[str, tuple[float, float]]
