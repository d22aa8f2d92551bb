"""What "nothing is lost" holds the service to, as functions: the call bound, one final event per
poll, job runs per API call, and the pacing and gap figures.

Both fault harnesses (the matrix and the long run) judge their containers with these; the lifecycle
model (``bench.model.invariants``) reads the events stream and judges a final poll's event with the
same two functions (``final_events``, ``event_problem``).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

from redis.asyncio import Redis

from bench.faults.ledger import Answered

# Claims of a poll's job per status call the API saw; more means runs that called nothing.
MAX_RUNS_PER_CALL = 1.2


def is_throttled(answer: str) -> bool:
    """A throttling answer (Graph code 4 ``throttle[:subcode]``, or HTTP 429): it spends no
    check (the check is postponed and the window extended)."""
    return answer == "429" or answer.split(":", 1)[0] == "throttle"


def call_bound(
    max_checks: int, calls: Sequence[Answered], *, polls: int = 1, disrupted: int = 0
) -> int:
    """The most status calls one container may cost (README "call_bound" of the fault run):
    ``max_checks`` per poll, + 1 per throttled answer (it spends no check), + 1 per dropped
    connection (aiohttp re-sends an idempotent GET once), + 1 per run of it that a fault cut
    off after its call (SIGKILLed, frozen past its lock, cut off from Redis: its answer may be
    lost, and the re-run calls again)."""
    throttled = sum(is_throttled(c.answer) for c in calls)
    dropped = sum(c.answer == "drop" for c in calls)
    return max_checks * polls + throttled + dropped + disrupted


def runs_per_call(runs: int | None, calls: int) -> float | None:
    if runs is None or calls <= 0:
        return None
    return runs / calls


# ----- final events ------------------------------------------------------------------------


async def final_events(redis: Redis, stream: str, *, page: int = 5000) -> Counter[tuple[str, str]]:
    """The events stream counted per poll: (container id, generation) -> entries. Read in pages
    (a long run's stream holds one entry per container)."""
    counts: Counter[tuple[str, str]] = Counter()
    start = "-"
    while True:
        batch = await redis.xrange(stream, min=start, count=page)
        for _id, fields in batch:
            cid = fields.get(b"container_id", b"").decode()
            counts[(cid, fields.get(b"generation", b"").decode())] += 1
        if len(batch) < page:
            return counts
        start = "(" + batch[-1][0].decode()  # exclusive (Redis >= 6.2)


def per_container(events: Counter[tuple[str, str]]) -> Counter[str]:
    """Final events per container id, all its polls together."""
    out: Counter[str] = Counter()
    for (cid, _gen), n in events.items():
        out[cid] += n
    return out


def event_problem(
    n_events: int, *, final: bool, polls: int = 1
) -> Literal["duplicate", "missing"] | None:
    """One final event per poll: more events than ``polls`` is a duplicate; a final container
    (or poll) without any is a missing event. (A live poll's events are not judged here.)"""
    if n_events > polls:
        return "duplicate"
    if final and n_events == 0:
        return "missing"
    return None


# ----- pacing and gaps ---------------------------------------------------------------------


def calls_ahead_of_pace(times: Iterable[float], per_second: float) -> int:
    """The most calls made ahead of ``per_second`` counted from the first one: max over k of
    (k + 1) - (calls due by the k-th call's time at that pace, the first one included)."""
    ts = sorted(times)
    if not ts or per_second <= 0:
        return 0
    return max(k + 1 - (math.floor((t - ts[0]) * per_second) + 1) for k, t in enumerate(ts))


def max_in_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most events within any window of ``width`` seconds."""
    ts = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while t - ts[j] >= width:
            j += 1
        best = max(best, i - j + 1)
    return best


def gaps(times: Sequence[float]) -> list[float]:
    ts = sorted(times)
    return [b - a for a, b in itertools.pairwise(ts)]
