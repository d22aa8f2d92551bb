"""The fault matrix's accounting (bench/faults/: invariants, report, matrix): the call bound,
rates and gaps, row names, runs per call. Pure; the rows themselves and the harness's own checks
against a real Redis: tests/system/test_fault_matrix.py.
"""

from __future__ import annotations

import pytest

from bench.faults.invariants import (
    call_bound,
    calls_ahead_of_pace,
    gaps,
    is_throttled,
    max_in_window,
)
from bench.faults.matrix import ROWS, parse_rows
from bench.faults.report import RowResult
from simulator import StatusCall


def call(t: float, answer: str = "IN_PROGRESS", cid: str = "1", delay: float = 0.0) -> StatusCall:
    return StatusCall(t, cid, "default", answer, delay)


def test_call_bound_counts_only_documented_extras() -> None:
    calls = [call(0), call(1, "throttle"), call(2, "429"), call(3, "drop"), call(4, "FINISHED")]
    assert call_bound(6, calls) == 6 + 2 + 1
    assert call_bound(6, calls, polls=2, disrupted=1) == 12 + 2 + 1 + 1
    assert call_bound(6, [call(0)] * 7) == 6
    assert is_throttled("throttle:613") and is_throttled("429") and not is_throttled("500")


def test_rate_and_gap_figures() -> None:
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_in_window([i * 0.02 for i in range(51)]) == 50  # 50/s paced: 50 in any 1 s
    assert max_in_window([]) == 0
    assert gaps([2.0, 0.0, 0.5]) == [0.5, 1.5]


def test_rows_are_named_and_numbered() -> None:
    assert parse_rows("1,frozen,11") == ["oom", "frozen", "sigkill"]
    assert parse_rows(None) == [r.key for r in ROWS]
    with pytest.raises(SystemExit):
        parse_rows("nope")
    assert len({r.number for r in ROWS}) == len(ROWS) == 11


def test_runs_per_call_is_judged() -> None:
    r = RowResult("x", "0", "t", runs=13, calls_total=10)
    assert r.runs_per_call == pytest.approx(1.3)
    assert RowResult("x", "0", "t", runs=None, calls_total=10).runs_per_call is None
    assert r.cells()[7] == "1.30"
    assert RowResult("x", "0", "t", runs=None, calls_total=10).cells()[7] == "unknown"


def test_calls_ahead_of_pace_counts_early_calls_not_late_ones() -> None:
    paced = [i * 0.02 for i in range(300)]  # 50/s exactly
    assert calls_ahead_of_pace(paced, 50) <= 1
    # Late calls fired together (a loaded worker) are never ahead of the pace.
    late = [t + (0.4 if 100 <= i < 120 else 0.0) for i, t in enumerate(paced)]
    assert max_in_window(late) > 60 and calls_ahead_of_pace(late, 50) <= 1
    # No pacing, or twice the pace: far ahead.
    assert calls_ahead_of_pace([i * 0.001 for i in range(300)], 50) > 250
    assert calls_ahead_of_pace([i * 0.01 for i in range(300)], 50) >= 149
    assert calls_ahead_of_pace([], 50) == 0
