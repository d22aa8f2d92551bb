"""Per-minute tallies in Redis for the console's chart: checks and final states per minute.

Prometheus keeps the real time series (counters per process, ``worker.ops.metrics``); the console
needs a small history that any ``serve`` replica can read without a Prometheus: one hash per
minute, ``{prefix}:stats:{minute}`` (``minute`` = Unix seconds // 60 on Redis' clock), with the
fields ``checks`` (API status calls recorded), ``final:<STATUS>`` (final states) and
``inflight`` (containers in flight, written by ``serve``'s sampler). Each hash expires
``STATS_TTL_SECONDS`` after its last write.

A worker counts in memory (``MINUTES``, one dict increment per check) and adds its counts to the
current minute every ``FLUSH_SECONDS`` (one pipeline), so the hot path makes no Redis call of its
own; a count may land in the minute after the one it happened in, never twice, never lost on a
clean stop (the last flush runs then). A flush that Redis refuses keeps its counts for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from worker.ops.loops import every
from worker.store.keys import Keys

log = logging.getLogger("threads_poller.stats")

FLUSH_SECONDS = 5.0
STATS_TTL_SECONDS = 2 * 3600
CHECKS_FIELD = "checks"
INFLIGHT_FIELD = "inflight"
FINAL_PREFIX = "final:"


class MinuteTally:
    """This process's counts since its last flush."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def note_check(self) -> None:
        self._counts[CHECKS_FIELD] += 1

    def note_final(self, status: str) -> None:
        self._counts[FINAL_PREFIX + status] += 1

    def take(self) -> dict[str, int]:
        counts, self._counts = dict(self._counts), Counter()
        return counts

    def give_back(self, counts: Mapping[str, int]) -> None:
        self._counts.update(counts)

    async def flush(self, redis: Redis, keys: Keys) -> int:
        """Add the counts to the current minute (Redis' clock); returns how many were written."""
        counts = self.take()
        if not counts:
            return 0
        try:
            seconds, _micros = await redis.time()
            key = keys.stats(int(seconds) // 60)
            async with redis.pipeline(transaction=True) as tx:
                for name, n in counts.items():
                    tx.hincrby(key, name, n)
                tx.expire(key, STATS_TTL_SECONDS)
                await tx.execute()
        except BaseException:
            self.give_back(counts)
            raise
        return sum(counts.values())


MINUTES = MinuteTally()


async def flush_forever(
    redis: Redis, keys: Keys, tally: MinuteTally = MINUTES, period: float = FLUSH_SECONDS
) -> None:
    """Flush every ``period`` until cancelled; a cancel flushes once more (a clean stop)."""

    async def round_() -> None:
        # A failed flush gives its counts back to the tally: the next round writes them.
        await tally.flush(redis, keys)

    try:
        await every(
            "stats flush", period, round_, wait_first=True, logger=log, level=logging.WARNING
        )
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tally.flush(redis, keys), 2.0)
        raise


async def read_minutes(redis: Redis, keys: Keys, *, now: float, minutes: int) -> list[MinuteStats]:
    """The last ``minutes`` minutes up to ``now`` (Redis time), oldest first; zeros when none."""
    last = int(now) // 60
    span = list(range(last - minutes + 1, last + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for minute in span:
            pipe.hgetall(keys.stats(minute))
        raws = await pipe.execute()
    return [MinuteStats.of(minute, raw) for minute, raw in zip(span, raws, strict=True)]


@dataclass(frozen=True, slots=True)
class MinuteStats:
    """One minute's tallies (``inflight`` None: no ``serve`` sampled it)."""

    minute: int
    checks: int = 0
    finals: dict[str, int] = field(default_factory=dict)
    inflight: int | None = None

    @classmethod
    def of(cls, minute: int, raw: Mapping[bytes | str, bytes | str]) -> MinuteStats:
        h = {_text(k): _text(v) for k, v in raw.items()}
        finals = {
            k[len(FINAL_PREFIX) :]: _int(v) for k, v in h.items() if k.startswith(FINAL_PREFIX)
        }
        inflight = _int(h[INFLIGHT_FIELD]) if INFLIGHT_FIELD in h else None
        return cls(minute, _int(h.get(CHECKS_FIELD, "0")), finals, inflight)

    @property
    def at(self) -> float:
        return self.minute * 60.0

    def final_total(self) -> int:
        return sum(self.finals.values())


async def note_inflight(redis: Redis, keys: Keys, *, now: float, inflight: int) -> None:
    """``serve``'s sampler: containers in flight at this minute (the last sample wins)."""
    key = keys.stats(int(now) // 60)
    async with redis.pipeline(transaction=True) as tx:
        tx.hset(key, INFLIGHT_FIELD, str(inflight))
        tx.expire(key, STATS_TTL_SECONDS)
        await tx.execute()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        return 0
