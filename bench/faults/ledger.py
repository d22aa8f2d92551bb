"""The API's side of the accounting: every status call as the simulator saw it.

The ledger is a status hook of the simulator (``SimulatorState.add_status_hook``): it records each
call's arrival time, account, answer label and the delay before the answer went out, whether the
simulator runs on its own thread (the matrix) or in the caller's loop (the long run).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Protocol

from simulator import SimulatorState, StatusCall


class Answered(Protocol):
    """What the accounting reads of one call: the simulator's label of its answer ("FINISHED",
    "throttle", "drop", "500"...) and how long after the call the answer went out."""

    @property
    def answer(self) -> str: ...

    @property
    def delay(self) -> float: ...


class Ledger:
    """Every status call as the simulator saw it (arrival time, account, answer, delay).

    Written from the simulator's thread, read from the harness's: a lock, and copies out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[StatusCall] = []
        self._by_id: dict[str, list[StatusCall]] = {}

    def attach(self, state: SimulatorState) -> Ledger:
        """Record every status call ``state`` answers from now on."""
        state.add_status_hook(self.record)
        return self

    def record(self, call: StatusCall) -> None:
        with self._lock:
            self._calls.append(call)
            self._by_id.setdefault(call.container_id, []).append(call)

    @property
    def calls(self) -> list[StatusCall]:
        with self._lock:
            return list(self._calls)

    def of(self, cid: str) -> list[StatusCall]:
        with self._lock:
            return list(self._by_id.get(cid, ()))

    def answered_between(self, start: float, end: float) -> Counter[str]:
        """Per container: answers sent (arrival + delay) within [start, end]."""
        return Counter(
            c.container_id
            for c in self.calls
            if c.answer != "drop" and start <= c.t + c.delay <= end
        )
