"""The worker process's collector (worker.runtime.app.tune_gc): the start's objects frozen, the
young generation collected after GC_YOUNG_THRESHOLD objects, the older ones as CPython sets them."""

from __future__ import annotations

import gc

from worker.runtime.app import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_the_start_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        # Cycles made afterwards are still collected.
        for _ in range(100):
            cycle: list[object] = []
            cycle.append(cycle)
        del cycle
        assert gc.collect() >= 100
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
