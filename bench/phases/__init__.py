"""The bench's world and its phases. ``Bench`` (world.py) owns one private redis-server, the
simulator (``threads-poller simulate``) and the worker processes it starts; each phase of
bench/bench.py is a function of a ``Bench`` (its docstring or its module's says what it
measures) that fills in its ``Figures`` (figures.py). One module per family of phases:
throughput.py (noop, floor, throughput, tracing), schedule.py, scale.py, webhooks.py,
memory.py (capacity, history, million); the paced phase is bench/paced.py.

This module names what the rest of the bench imports, and ``PHASES``: each phase's function
by its ``--phases`` name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.paced import phase_paced
from bench.phases.figures import (
    ALL_PHASES,
    DEFAULT_PHASES,
    PREFIX,
    REPO,
    Config,
    Figures,
    HookRun,
    ScaleRun,
)
from bench.phases.memory import phase_capacity, phase_history, phase_million
from bench.phases.processes import event_loop, stop_spawned
from bench.phases.scale import phase_scale
from bench.phases.schedule import phase_schedule
from bench.phases.throughput import phase_floor, phase_noop, phase_throughput, phase_tracing
from bench.phases.webhooks import phase_webhooks
from bench.phases.world import Bench

PHASES: dict[str, Callable[[Bench], Awaitable[object]]] = {
    "noop": phase_noop,
    "floor": phase_floor,
    "throughput": phase_throughput,
    "schedule": phase_schedule,
    "capacity": phase_capacity,
    "scale": phase_scale,
    "million": phase_million,
    "webhooks": phase_webhooks,
    "paced": phase_paced,
    "history": phase_history,
    "tracing": phase_tracing,
}

__all__ = [
    "ALL_PHASES",
    "DEFAULT_PHASES",
    "PHASES",
    "PREFIX",
    "REPO",
    "Bench",
    "Config",
    "Figures",
    "HookRun",
    "ScaleRun",
    "event_loop",
    "stop_spawned",
]
