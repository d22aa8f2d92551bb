"""The lifecycle's model, a bounded run: a hypothesis state machine drives the real store, Lua
scripts, planner, job functions and runner through random interleavings (enqueues, carousels,
answers, stalls, timeouts, dead workers, lost replies, Redis restarts and failovers) on a real
redis-server primary and replica, and checks every promise after every step
(``bench/model/rules.py``). ``python -m bench.model`` is the long run;
``python -m bench.model.mutants`` shows it finds each of issue 20's defects when its fix is
reverted."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from bench.model.rules import machine


def test_every_promise_holds_after_every_step(tmp_path: Path) -> None:
    with machine(tmp_path) as (cls, stats):
        run_state_machine_as_test(
            cls,
            settings=settings(
                max_examples=40,
                stateful_step_count=35,
                deadline=None,
                database=None,
                # The same examples every run (the long run, python -m bench.model, explores).
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            ),
        )
    # The run did reach the interleavings it is there for.
    assert stats.steps > 500
    assert stats.rules["claim_and_run"] > 50 and stats.publish_calls > 0
