"""A burst of enqueues for one paced account whose live polls have their next checks booked
ahead: enqueues/s, the work Redis does for it, and how long another client waits meanwhile.

    .venv/bin/python -m bench.pacing_burst [--n 100000] [--live 20] [--rate 5] [--batch 1000]
        [--ping-every-ms 2] [--keep]

One private ``redis-server`` (bench/harness.py: a free port, AOF and RDB off), stopped at the
end. Steps:

1. The workers' pacing is published as a worker publishes it (``{prefix}:config``,
   ``ACCOUNT_MAX_REQUESTS_PER_SECOND=--rate``).
2. ``--live`` containers of the account are enqueued, and once their first slots have passed
   each is claimed and recorded ``IN_PROGRESS`` through the worker's own scripts (claim.lua,
   record.lua): their next checks are booked one ``POLL_INTERVAL_SECONDS`` ahead, the normal
   state of an account with polls under way.
3. ``--n`` new containers of the same account go in through the producer path
   (``PollerClient.enqueue_many``, batches of ``--batch``: one pipeline of enqueue.lua calls
   each), while another process (``--role ping``, its own connection) sends ``PING`` every
   ``--ping-every-ms`` and notes how long each took.

Printed: enqueues/s over the burst, the other client's PING latency during it (p50, p99, max),
Redis commands per enqueue (``INFO commandstats``, commands inside Lua included) and
redis-server CPU per enqueue; then a check of the calendar: every booked check (the queue's
scores) in a slot of its own. Targets (issue 22): >= 5,000 enqueues/s, PING max < 20 ms.
Exit status 0 whatever the figures, 1 when a slot was booked twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from bench.harness import Child, RedisServer, cpu_seconds, environment_without_settings, spawn
from bench.measure import RedisDelta, counters_delta, fmt, out, percentile, redis_counters

if TYPE_CHECKING:
    from config import Settings

PREFIX = "bench"
ACCOUNT = "4242"
REPO = Path(__file__).resolve().parent.parent


def settings_for(redis_url: str, rate: float, interval: float) -> object:
    from config import load_settings

    return load_settings(
        _env_file=None,
        redis_url=redis_url,
        key_prefix=PREFIX,
        account_max_requests_per_second=rate,
        poll_interval_seconds=interval,
        poll_max_seconds=max(300.0, interval),
    )


async def book_live_polls(redis: Redis, settings: object, ids: Sequence[str]) -> int:
    """Enqueue ``ids``, then run each one's first check as a worker would (claim.lua, then
    record.lua with IN_PROGRESS): its next check is booked one interval ahead. Returns how many
    were recorded."""
    from config import Settings
    from worker.client.client import PollerClient
    from worker.core.decisions import Decision
    from worker.core.result import PollResult
    from worker.store.keys import Keys
    from worker.store.queue import JobQueue
    from worker.store.results import ResultStore

    assert isinstance(settings, Settings)
    keys = Keys(settings.key_prefix)
    await PollerClient.from_settings(settings, redis).enqueue_many(ids, account=ACCOUNT)
    queue = JobQueue(redis, keys, job_ttl_seconds=settings.result_ttl_seconds)
    store = ResultStore.from_settings(redis, settings)
    recorded = 0
    # Their first checks run once all their slots have passed, as on an account whose polls
    # started a while ago: the calendar's latest booking is then the one ahead.
    rate = max(settings.account_max_requests_per_second, 1)
    await asyncio.sleep(len(ids) / rate + 0.1)
    deadline = time.monotonic() + 30
    while recorded < len(ids) and time.monotonic() < deadline:
        claim = await queue.claim("bench-live", limit=len(ids), lease_ms=30_000)
        for job in claim.jobs:
            assert job.state is not None
            current = PollResult.from_hash(job.state)
            now = job.now()
            decision = Decision(
                "IN_PROGRESS",
                False,
                now + settings.poll_interval_seconds,
                last_api_status="IN_PROGRESS",
                checks=current.checks + 1,
            )
            done = await store.record(job, current, decision, checked_at=now)
            recorded += done.outcome == "ok"
        if recorded < len(ids):
            wait = 0.05
            if claim.next_due_ms is not None:
                wait = min(0.5, max(0.0, (claim.next_due_ms - claim.now_ms) / 1000))
            await asyncio.sleep(wait)
    return recorded


async def double_booked(redis: Redis, step_ms: int) -> tuple[int, int, int]:
    """(booked checks, slots holding more than one, the smallest gap between two in ms) over the
    queue's scores: every check job is due at its own pacing slot."""
    from worker.store.keys import Keys

    scores = [int(s) for _, s in await redis.zrange(Keys(PREFIX).queue, 0, -1, withscores=True)]
    slots = [s // step_ms for s in scores]
    twice = len(slots) - len(set(slots))
    scores.sort()
    gaps = [b - a for a, b in itertools.pairwise(scores)]
    return len(scores), twice, min(gaps, default=0)


def ping_command(redis_url: str, every_ms: float, path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.pacing_burst",
        "--role",
        "ping",
        "--redis-url",
        redis_url,
        "--ping-every-ms",
        str(every_ms),
        "--out",
        str(path),
    ]


def run_pinger(redis_url: str, every_ms: float, path: Path) -> int:
    """``--role ping``: PING on one connection every ``every_ms`` until SIGTERM; writes
    ``[[monotonic start, seconds], ...]`` to ``path``. A process of its own, so that neither the
    burst's producer nor a thread switch of it adds to what is measured."""
    import redis as redis_sync

    samples: list[tuple[float, float]] = []

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    client = redis_sync.Redis.from_url(redis_url)
    try:
        client.ping()
        path.with_suffix(".ready").write_text("1", encoding="ascii")
        while True:
            t0 = time.monotonic()
            client.ping()
            samples.append((t0, time.monotonic() - t0))
            time.sleep(every_ms / 1000)
    finally:
        path.write_text(json.dumps(samples), encoding="ascii")
        client.close()


async def run(args: argparse.Namespace) -> int:
    from config import Settings
    from worker.store.results import ResultStore, pacing_step_ms

    tmp = Path(tempfile.mkdtemp(prefix="threads-poller-pacing-burst-"))
    server = RedisServer(tmp / "redis", new_session=True)
    await server.astart()
    pinger = None
    try:
        redis = Redis.from_url(server.url)
        settings = settings_for(server.url, args.rate, args.interval)
        assert isinstance(settings, Settings)
        step = pacing_step_ms(args.rate)
        info = await redis.info("server")
        out(
            f"pacing burst: {args.n} enqueues for account {ACCOUNT} at {args.rate:g} req/s "
            f"(slots of {step} ms), {args.live} live polls booked {args.interval:g} s ahead; "
            f"redis-server {info['redis_version']} on {server.url}; {os.cpu_count()} cores"
        )
        await ResultStore.from_settings(redis, settings).publish_config(webhook_signing=False)
        t0 = time.monotonic()
        live = [f"9{i:015d}" for i in range(args.live)]
        recorded = await book_live_polls(redis, settings, live)
        out(f"  live polls: {recorded}/{args.live} booked ahead in {time.monotonic() - t0:.1f} s")

        ping_out = tmp / "ping.json"
        env = environment_without_settings()
        env["PYTHONPATH"] = str(REPO)
        pinger = spawn(
            "ping",
            ping_command(server.url, args.ping_every_ms, ping_out),
            tmp / "ping.log",
            env=env,
            cwd=REPO,
        )
        await pinger_ready(pinger, ping_out)
        measured = await burst(redis, settings, args, server.pid, pinger, ping_out)
        report_burst(measured, args)
        booked, twice, gap = await double_booked(redis, step)
        out(
            f"  calendar: {booked} checks booked, {twice} slots booked twice, smallest gap "
            f"{gap} ms (step {step} ms)"
        )
        rate_ok = measured.enqueued / measured.took >= 5000
        ping_ok = bool(measured.during) and max(measured.during) < 20
        out(
            f"  targets: >= 5000 enqueues/s {'PASS' if rate_ok else 'FAIL'}, "
            f"PING max < 20 ms {'PASS' if ping_ok else 'FAIL'}, "
            f"no slot booked twice {'PASS' if twice == 0 else 'FAIL'}"
        )
        await redis.aclose()
        return 1 if twice else 0
    finally:
        if pinger is not None:
            pinger.stop(5)
        await server.astop()
        if args.keep:
            out(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def pinger_ready(pinger: Child, ping_out: Path) -> None:
    """Wait until the pinger has its connection (or died), then for a few idle samples."""
    for _ in range(500):
        if ping_out.with_suffix(".ready").exists() or not pinger.alive():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # a few samples of an idle Redis first


@dataclass
class Burst:
    """What the burst measured."""

    enqueued: int
    took: float  # seconds, first enqueue to last
    delta: RedisDelta
    redis_cpu_s: float  # redis-server's CPU seconds over the burst
    latest: Any  # LATENCY LATEST after it
    slow: Any  # SLOWLOG GET 128 after it
    during: list[float]  # the other client's PING times during it, ms


async def burst(
    redis: Redis,
    settings: Settings,
    args: argparse.Namespace,
    server_pid: int,
    pinger: Child,
    ping_out: Path,
) -> Burst:
    """``--n`` enqueues in batches of ``--batch`` while the pinger runs; then the pinger is
    stopped and its samples read."""
    from worker.client.client import PollerClient

    client = PollerClient.from_settings(settings, redis)
    ids = [f"8{i:015d}" for i in range(args.n)]
    # Redis' own view of its stalls, to tell them from the machine's scheduling: every
    # event of 2 ms or more (LATENCY), every command of 2 ms or more (SLOWLOG).
    await redis.config_set("latency-monitor-threshold", 2)
    await redis.config_set("slowlog-log-slower-than", 2000)
    await redis.execute_command("LATENCY", "RESET")  # type: ignore[no-untyped-call]
    await redis.slowlog_reset()
    before = await redis_counters(redis)
    cpu0 = cpu_seconds(server_pid) or 0.0
    start = time.monotonic()
    enqueued = 0
    for i in range(0, len(ids), args.batch):
        done = await client.enqueue_many(ids[i : i + args.batch], account=ACCOUNT)
        enqueued += sum(o.outcome == "enqueued" for o in done)
    end = time.monotonic()
    cpu1 = cpu_seconds(server_pid) or 0.0
    after = await redis_counters(redis)
    latest = await redis.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
    slow = await redis.slowlog_get(128)
    await asyncio.sleep(0.2)
    await pinger.astop(10)
    during = ping_samples(ping_out, start, end)
    delta = counters_delta(before, after, own_reads=1)
    return Burst(enqueued, end - start, delta, cpu1 - cpu0, latest, slow, during)


def ping_samples(ping_out: Path, start: float, end: float) -> list[float]:
    """The pinger's PING times (ms) between ``start`` and ``end``: its file, once it stopped (a
    small local file, read once: nothing else runs on the loop by then)."""
    samples = json.loads(ping_out.read_text(encoding="ascii")) if ping_out.exists() else []
    return [dt * 1000 for t, dt in samples if start <= t <= end]


def report_burst(b: Burst, args: argparse.Namespace) -> None:
    """Enqueues/s, the other client's PING, Redis' own stalls, its work and CPU per enqueue."""
    took, during, slow = b.took, b.during, b.slow
    per = max(b.enqueued, 1)
    scripted = {k: v for k, v in b.delta.commands.items() if k not in ("info", "evalsha")}
    shown = ", ".join(
        f"{k} {v / per:.2f}" for k, v in sorted(scripted.items(), key=lambda kv: -kv[1])
    )
    out(f"  enqueued {b.enqueued}/{args.n} in {took:.2f} s: {b.enqueued / took:.0f} enqueues/s")
    out(
        f"  another client's PING during the burst (every {args.ping_every_ms:g} ms, "
        f"n={len(during)}): p50 {fmt(percentile(during, 50), '.2f')} ms, p99 "
        f"{fmt(percentile(during, 99), '.2f')} ms, max "
        f"{fmt(max(during, default=float('nan')), '.2f')} ms"
    )
    events = ", ".join(f"{e[0].decode()} max {e[3]} ms" for e in b.latest) or "none"
    slowest = max((int(e["duration"]) for e in slow), default=0)
    if args.keep:
        for e in slow:
            out(f"    slowlog: {int(e['duration']) / 1000:.1f} ms {e['command'][:60]!r}")
    out(
        f"  Redis' own stalls of 2 ms or more (LATENCY LATEST): {events}; commands of 2 ms or "
        f"more (SLOWLOG): {len(slow)}, the slowest {slowest / 1000:.1f} ms"
    )
    out(f"  Redis commands per enqueue (inside Lua included): {shown}")
    out(
        f"  redis-server CPU per enqueue {1000 * b.redis_cpu_s / per:.3f} ms "
        f"({100 * b.redis_cpu_s / took:.0f}% of a core during the burst)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.pacing_burst",
        description="A burst of enqueues for one paced account with live polls booked ahead: "
        "enqueues/s, Redis commands per enqueue, another client's PING latency.",
    )
    p.add_argument("--n", type=int, default=100_000, help="containers in the burst (100,000)")
    p.add_argument("--live", type=int, default=20, help="live polls booked ahead (20)")
    p.add_argument("--rate", type=float, default=5.0, help="ACCOUNT_MAX_REQUESTS_PER_SECOND (5)")
    p.add_argument("--interval", type=float, default=60.0, help="POLL_INTERVAL_SECONDS (60)")
    p.add_argument("--batch", type=int, default=1000, help="ids per enqueue_many call (1,000)")
    p.add_argument("--ping-every-ms", type=float, default=2.0, help="PING period (2 ms)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (redis log)")
    p.add_argument("--role", default="bench", choices=["bench", "ping"], help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "ping":
        return run_pinger(args.redis_url, args.ping_every_ms, args.out)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
