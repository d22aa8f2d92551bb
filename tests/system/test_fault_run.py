"""Nothing is lost: the fault run (bench/faults/run.py) at CI size.

It runs the same code as ``python -m bench.faults.run``: its own redis-server (AOF on, SIGKILLed and
restarted once), three worker processes of which one is SIGKILLed every few seconds, the simulator
answering 20% of status calls with a random fault, and fails on any lost or wrong container, any
duplicate or missing final event and any container over the call bound. The run's accounting:
tests/unit/test_faults_run.py; what the run found: tests/integration/test_redis_restart.py.
"""

from __future__ import annotations

from pathlib import Path

from bench.faults.run import run_fault_run
from bench.faults.scenarios import FaultRunConfig


async def test_fault_run_ci_sized_loses_nothing(tmp_path: Path) -> None:
    cfg = FaultRunConfig(
        containers=300,
        workers=3,
        kill_every=3.0,
        fault_rate=0.2,
        interval=6.0,
        window=30.0,
        rate=40.0,
        accounts=5,
        seed=7,
        workdir=tmp_path / "run",
    )
    lines: list[str] = []
    report = await run_fault_run(cfg, say=lines.append)
    text = "\n".join(lines) + report.render()
    assert report.lost == [], text
    assert report.wrong == [], text
    assert report.late == [], text  # checks started too late: the machine was overloaded
    assert report.duplicate_events == [], text
    assert report.missing_events == [] and report.stray_events == 0, text
    assert report.over_bound == [], text
    assert report.dead_letters == 0, text
    assert report.right + len(report.explained) == cfg.containers, text
    # Every explained TIMED_OUT is rare (model: ~0.01 per run); a handful means a regression.
    assert len(report.explained) <= 2, text
    # The run really was hostile: kills, a Redis crash, faults, both doors.
    assert report.kills >= 5 and report.redis_restarts == 1, text
    # An enqueue whose reply a Redis restart cut off is sent again and answers "duplicate": the
    # poll exists once either way (enqueue is idempotent).
    outcomes = report.enqueue_outcomes
    assert report.intake_written == 75, text
    assert outcomes["enqueued"] + outcomes.get("duplicate", 0) == 225, text
    assert outcomes.get("duplicate", 0) <= report.redis_restarts * 5, text
    assert report.calls_total > cfg.containers and report.calls_max > cfg.max_checks, text
    assert report.passed, text
    assert report.inflight_left == 0 and report.queue_left == 0 and report.intake_left == 0, text
