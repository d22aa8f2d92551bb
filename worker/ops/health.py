"""Per-process liveness: each worker beats in Redis, ``threads-poller health`` reads the beat.

One key for the whole queue would stay fresh while two of three workers are dead, and the first
worker to stop would delete it for everybody. So each worker process writes its own key,
``{prefix}:worker:{name}``, every ``BEAT_SECONDS`` with a TTL of three beats, and lists its name
in the ``{prefix}:workers`` sorted set so that readers find the live ones without a SCAN over the
whole keyspace.

Times in a heartbeat are Redis server time: the health check of one container compares them with
the same clock, whatever the skew between hosts.

``threads-poller health`` (the image's HEALTHCHECK) passes only when a worker process that is
alive *here* beats. A host name is not enough: with host networking every container shares the
host's name, and a container with no worker in it would answer for a worker next door. So each
beat carries its process's identity (``proc``: the boot id and the process's start time from
``/proc``, written once at start), and the check compares it with ``/proc/{pid}`` as this PID
namespace (this container) sees it: another container's worker, a dead process or a reused pid
does not match. Where ``/proc`` is missing (not Linux) the check falls back to the host name and
says so. A worker that received SIGTERM reports itself as draining and no longer counts as
healthy; on a clean exit it deletes its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from worker.ops.loops import every
from worker.store.keys import Keys

log = logging.getLogger("threads_poller.health")

BEAT_SECONDS = 5.0
# Three beats: one lost write (a Redis blip, a long GC pause) does not make a worker look dead.
TTL_SECONDS = 3 * BEAT_SECONDS
# Sorted-set members older than this are removed by any worker's beat; their keys expired long ago.
PRUNE_AFTER_SECONDS = 3600.0
# A state change (draining) is published within this long, not at the next full beat.
_STATE_POLL_SECONDS = 0.5


async def redis_now(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return float(seconds) + float(micros) / 1_000_000


def process_identity(pid: int, proc: Path = Path("/proc")) -> str | None:
    """One process's life, as this PID namespace sees it: boot id and start time (clock ticks
    since boot). None when the process is gone or there is no ``/proc``."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        boot = (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ")": count fields after its last ")".
    # Field 22 (starttime) is the 20th after it.
    after = stat.rsplit(")", 1)[-1].split()
    return f"{boot}:{after[19]}" if len(after) > 19 else None


@dataclass(frozen=True, slots=True)
class Beat:
    """One worker's last heartbeat, as stored (JSON) in its key."""

    name: str
    host: str
    pid: int
    started_at: float
    beat_at: float
    ttl_s: float
    accepting: bool = True
    jobs: dict[str, int] = field(default_factory=dict)
    # process_identity() of the worker, written at start (None: written without /proc).
    proc: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
                "beat_at": self.beat_at,
                "ttl_s": self.ttl_s,
                "accepting": self.accepting,
                "jobs": self.jobs,
                "proc": self.proc,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Beat | None:
        try:
            data = json.loads(raw)
            return cls(
                name=str(data["name"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                started_at=float(data["started_at"]),
                beat_at=float(data["beat_at"]),
                ttl_s=float(data["ttl_s"]),
                accepting=bool(data.get("accepting", True)),
                jobs={str(k): int(v) for k, v in (data.get("jobs") or {}).items()},
                proc=str(data["proc"]) if data.get("proc") else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            # Another version, or a hand-written key: not a heartbeat we can vouch for.
            return None


# What the heartbeat reports about the process: the runner's counters and whether it takes jobs.
StateProbe = Callable[[], tuple[bool, dict[str, int]]]


def _no_probe() -> tuple[bool, dict[str, int]]:
    return True, {}


class Heartbeat:
    """Writes this process's heartbeat until cancelled; ``stop`` removes it."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        name: str,
        *,
        probe: StateProbe = _no_probe,
        beat_seconds: float = BEAT_SECONDS,
        ttl_seconds: float = TTL_SECONDS,
        host: str | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.probe = probe
        self.beat_seconds = beat_seconds
        self.ttl_seconds = ttl_seconds
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.proc = process_identity(self.pid)
        self.started_at: float | None = None
        self.beats = 0

    async def beat(self) -> Beat:
        now = await redis_now(self.redis)
        if self.started_at is None:
            self.started_at = now
        accepting, jobs = self.probe()
        beat = Beat(
            name=self.name,
            host=self.host,
            pid=self.pid,
            started_at=self.started_at,
            beat_at=now,
            ttl_s=self.ttl_seconds,
            accepting=accepting,
            jobs=jobs,
            proc=self.proc,
        )
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(
                self.keys.worker_heartbeat(self.name),
                beat.to_json(),
                px=int(self.ttl_seconds * 1000),
            )
            tx.zadd(self.keys.workers, {self.name: now})
            tx.zremrangebyscore(self.keys.workers, "-inf", now - PRUNE_AFTER_SECONDS)
            await tx.execute()
        self.beats += 1
        return beat

    async def run(self) -> None:
        """Beat every ``beat_seconds``, and at once when the worker starts draining (looked at
        every half second). A failed beat (Redis is away, or the probe broke) is logged and tried
        again a whole beat later: meanwhile the key expires and health says so."""
        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        last_accepting = True

        async def look() -> None:
            nonlocal last_beat, last_accepting
            try:
                accepting, _ = self.probe()
                if loop.time() - last_beat < self.beat_seconds and accepting == last_accepting:
                    return
                await self.beat()
                last_accepting = accepting
            except Exception:
                last_beat = loop.time()  # the next try a whole beat later
                raise
            last_beat = loop.time()

        await every(
            "heartbeat",
            min(_STATE_POLL_SECONDS, self.beat_seconds),
            look,
            wait_first=True,
            logger=log,
            level=logging.WARNING,
        )

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=True) as tx:
                tx.delete(self.keys.worker_heartbeat(self.name))
                tx.zrem(self.keys.workers, self.name)
                await tx.execute()


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    message: str
    beats: tuple[Beat, ...] = ()


async def live_beats(redis: Redis, keys: Keys) -> tuple[float, list[Beat]]:
    """Redis time and every heartbeat younger than its own TTL."""
    now = await redis_now(redis)
    names = await redis.zrangebyscore(keys.workers, now - PRUNE_AFTER_SECONDS, "+inf")
    if not names:
        return now, []
    decoded = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    raws = await redis.mget([keys.worker_heartbeat(n) for n in decoded])
    beats = [b for raw in raws if raw is not None and (b := Beat.from_json(raw)) is not None]
    return now, [b for b in beats if now - b.beat_at <= b.ttl_s]


# Is this beat's process alive here (this PID namespace)? None: cannot tell, match the host.
LocalProbe = Callable[[Beat], bool | None]


def is_local(beat: Beat) -> bool | None:
    """``beat``'s process runs in this container (same pid, same life)? None without /proc."""
    if process_identity(os.getpid()) is None:
        return None
    return beat.proc is not None and process_identity(beat.pid) == beat.proc


def evaluate(
    now: float,
    beats: list[Beat],
    *,
    host: str | None,
    local: LocalProbe | None = None,
    draining_ok: bool = False,
) -> Health:
    """Pure: is a worker (on ``host``, or anywhere when None) alive and taking jobs?

    With ``local``, only beats whose process ``local`` finds here count (``threads-poller
    health`` without --host or --any: this container's own worker). With ``draining_ok`` (a
    liveness probe: ``health --liveness``) a worker that stopped taking jobs after SIGTERM and
    still beats counts as alive: killing it would cut its drain short."""
    mine = [b for b in beats if host is None or b.host == host]
    where = "any host" if host is None else f"host {host}"
    fallback = ""
    if local is not None and mine:
        verdicts = [(b, local(b)) for b in mine]
        if any(v is None for _, v in verdicts):
            fallback = " (host name match only: no /proc here)"
        else:
            here = [b for b, v in verdicts if v]
            if not here:
                return Health(
                    False,
                    f"unhealthy: no worker process in this container beats; {len(mine)} live "
                    f"worker(s) with host name {host} run elsewhere (host networking?)",
                )
            mine = here
            where = "this container"
    if not mine:
        others = f"; {len(beats)} live worker(s) elsewhere" if beats else ""
        return Health(False, f"unhealthy: no worker heartbeat from {where}{others}")
    ready = [b for b in mine if b.accepting]
    if not ready:
        names = ", ".join(b.name for b in mine)
        if draining_ok:
            return Health(True, f"alive: worker {names} is shutting down (draining)", tuple(mine))
        return Health(False, f"unhealthy: worker {names} is shutting down", tuple(mine))
    best = max(ready, key=lambda b: b.beat_at)
    jobs = " ".join(f"{k}={v}" for k, v in best.jobs.items())
    more = f" (+{len(ready) - 1} more)" if len(ready) > 1 else ""
    age = max(0.0, now - best.beat_at)
    up = max(0.0, now - best.started_at)
    return Health(
        True,
        f"healthy: worker {best.name} pid {best.pid}, last beat {age:.1f}s ago, up {up:.0f}s"
        f"{(' ' + jobs) if jobs else ''}{more}{fallback}",
        tuple(ready),
    )


async def check(
    redis: Redis,
    keys: Keys,
    *,
    host: str | None,
    local: LocalProbe | None = None,
    draining_ok: bool = False,
) -> Health:
    now, beats = await live_beats(redis, keys)
    return evaluate(now, beats, host=host, local=local, draining_ok=draining_ok)
