"""The bench's floor figure is in the default run and in its summary (pure). The floor's checks
against a real Redis and the simulator: tests/integration/test_bench_floor.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench import build_parser
from bench.phases import DEFAULT_PHASES, Bench, Config
from bench.report import summary


def test_floor_is_in_the_default_run_and_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime

    assert "floor" in DEFAULT_PHASES
    assert build_parser().parse_args([]).phases.split(",") == list(DEFAULT_PHASES)
    cfg = Config(
        quick=True,
        n=100,
        capacity_n=100,
        million_n=100,
        schedule_seconds=1.0,
        capacity_run_seconds=1.0,
        phases=DEFAULT_PHASES,
        scale_workers=(1,),
        log_level="INFO",
        worker_env={},
        profile=None,
        keep=False,
        max_jobs=200,
        half_rate=None,
    )
    bench = Bench(cfg, tmp_path)
    bench.figures.floor_rate, bench.figures.check_rate = 5000.0, 2000.0
    bench.figures.floor_cpu_ms, bench.figures.floor_redis_cpu_ms = 0.185, 0.036
    summary(bench.figures, cfg, datetime.datetime.now(datetime.UTC))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("floor checks/s") and line.endswith(" 5000") for line in lines)
    assert any(line.startswith("ratio ours / floor") and line.endswith(" 0.40") for line in lines)
    assert any("floor CPU ms per check" in line and "0.185 / 0.036" in line for line in lines)
