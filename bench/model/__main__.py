"""``python -m bench.model [--examples N] [--steps N] [--seed N]``: a long run of the lifecycle's
model, printing how many examples, steps and distinct interleavings it covered."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from bench.model.rules import machine


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40, help="most steps per example")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--no-shrink", action="store_true", help="stop at the first broken promise, as found"
    )
    args = parser.parse_args()
    t0 = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="lifecycle-model-") as tmp,
        machine(Path(tmp)) as (
            cls,
            stats,
        ),
    ):
        config = settings(
            max_examples=args.examples,
            stateful_step_count=args.steps,
            deadline=None,
            database=None,
            derandomize=args.seed is not None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
            phases=[Phase.explicit, Phase.reuse, Phase.generate] if args.no_shrink else list(Phase),
        )
        failed: Exception | None = None
        try:
            run_state_machine_as_test(cls, settings=config)
        except Exception as exc:
            # A broken promise (AssertionError), or hypothesis' own error when replaying an
            # example whose timing differed (Flaky): the first failure seen is what counts.
            if stats.first_failure is None and not isinstance(exc, AssertionError):
                raise
            failed = exc
        took = time.monotonic() - t0
        print(f"examples: {stats.examples}   steps: {stats.steps}   in {took:.0f} s")
        print(f"distinct interleavings (rule sequences): {len(stats.interleavings)}")
        print(
            f"publish calls: {stats.publish_calls}   replies lost: {stats.lost_replies}   "
            f"failovers: {stats.failovers}   Redis restarts: {stats.restarts}"
        )
        print("final states: " + ", ".join(f"{k} {v}" for k, v in stats.finals.most_common()))
        print("steps by rule: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.rules.items())))
        if failed is not None:
            # No example recorded: a rule's own check failed (an AssertionError raised in a
            # step, e.g. "a run whose lease ran out went on after its renewal"), not the
            # invariant; it is a broken promise all the same.
            where = stats.first_failure if stats.first_failure is not None else "?"
            message = stats.first_failure_message or str(failed).splitlines()[0]
            print(f"BROKEN PROMISE, first seen in example {where}: {message}")
            if stats.first_failure_trace:
                print("its steps: " + ", ".join(stats.first_failure_trace))
            print(f"shrunk to: {str(failed).splitlines()[0] if str(failed) else failed!r}")
            return 1
    print("every invariant held after every step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
