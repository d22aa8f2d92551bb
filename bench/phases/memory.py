"""The memory family of phases: ``capacity`` (Redis bytes per queued container, and a worker
with all of them due), ``history`` (Redis bytes of one poll's history) and ``million`` (a
million in flight on one Redis, and the schedule phase's lateness beside them).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Sequence

from redis.asyncio import Redis

from bench.harness import proc_status_kib, threads_poller_command
from bench.measure import fmt, out
from bench.phases.figures import CAPACITY_IDS, PREFIX, SCHEDULE_IDS
from bench.phases.schedule import phase_schedule
from bench.phases.world import Bench

# The history phase: polls of 6 checks (interval and window as the schedule's max_checks reads).
HISTORY_POLLS = 200
HISTORY_INTERVAL = 1.0
HISTORY_WINDOW = 5.0
# How far ahead the million phase moves its parked polls' next checks (README, "A million").
PARK_MS = 3_600_000


async def phase_capacity(bench: Bench) -> None:
    from worker.store.keys import Keys

    n, f, keys = bench.cfg.capacity_n, bench.figures, Keys(PREFIX)
    out(f"\n[capacity] {n} containers queued, default schedule (60 s / 300 s), no worker")
    await bench.reset()
    settings = bench.settings()
    ids = [f"{CAPACITY_IDS}{i:015d}" for i in range(n)]
    used0 = int((await bench.redis.info("memory"))["used_memory"])
    t0 = time.monotonic()
    enqueued = await bench.enqueue_ids(ids, settings)
    took = time.monotonic() - t0
    used1 = int((await bench.redis.info("memory"))["used_memory"])
    f.enqueue_rate = enqueued / took
    f.bytes_per_container = (used1 - used0) / n
    sample = ids[:: max(1, n // 200)]
    hash_bytes = await mean_memory_usage(bench.redis, [keys.result(c) for c in sample])
    gen = await bench.redis.hget(keys.result(sample[0]), "generation")  # type: ignore[misc]
    job_key = keys.job_data(keys.job_id(sample[0], gen.decode() if gen else ""))
    job_bytes = await mean_memory_usage(bench.redis, [job_key])
    queue_bytes = await mean_memory_usage(bench.redis, [keys.queue]) / n
    inflight_bytes = await mean_memory_usage(bench.redis, [keys.inflight]) / n
    out(
        f"  enqueued {enqueued} in {took:.1f} s ({f.enqueue_rate:.0f}/s, batches of 1000); "
        f"used_memory {used0 / 2**20:.1f} -> {used1 / 2**20:.1f} MiB"
    )
    out(
        f"  Redis memory per queued container: {f.bytes_per_container:.0f} bytes "
        f"(MEMORY USAGE: result hash ~{hash_bytes:.0f}, arq job key ~{job_bytes:.0f}, "
        f"queue zset ~{queue_bytes:.0f}, inflight zset ~{inflight_bytes:.0f} per entry)"
    )
    # Now a worker with all of them due: the first check of each, at full speed.
    child = bench.spawn_worker("capacity", bench.worker_env())
    await bench.wait_ready(child)
    await asyncio.sleep(bench.cfg.capacity_run_seconds)
    rss = proc_status_kib(child.pid, "VmRSS")
    hwm = proc_status_kib(child.pid, "VmHWM")
    in_flight = int(await bench.redis.zcard(keys.inflight))
    child.stop()
    calls = await bench.sim("GET", "/calls")
    checked = int(calls["status_calls"])
    used2 = int((await bench.redis.info("memory"))["used_memory"])
    f.rss_100k_mib = None if rss is None else rss / 1024
    f.hwm_100k_mib = None if hwm is None else hwm / 1024
    f.capacity_in_flight = in_flight
    if checked:
        f.bytes_per_checked_container = f.bytes_per_container + (used2 - used1) / checked
    out(
        f"  worker with {in_flight} in flight for {bench.cfg.capacity_run_seconds:.0f} s "
        f"({checked} first checks made): RSS {fmt(f.rss_100k_mib, '.1f')} MiB, "
        f"peak (VmHWM) {fmt(f.hwm_100k_mib, '.1f')} MiB"
    )
    out(
        f"  Redis memory per container after its first check: "
        f"{fmt(f.bytes_per_checked_container)} bytes (hash filled in, arq's retry key)"
    )


async def phase_history(bench: Bench) -> None:
    """What a container's history costs (README, "History"): polls of enqueue + 6 checks +
    final (IN_PROGRESS until the window ends), then MEMORY USAGE of each history key."""
    from worker.core.history import EventKind, parse_history
    from worker.store.keys import Keys

    n, keys, f = HISTORY_POLLS, Keys(PREFIX), bench.figures
    out(
        f"\n[history] {n} polls of enqueue + 6 checks + final (interval "
        f"{HISTORY_INTERVAL:g} s, window {HISTORY_WINDOW:g} s): Redis bytes of each history"
    )
    await bench.reset()
    settings = bench.settings(
        poll_interval_seconds=HISTORY_INTERVAL, poll_max_seconds=HISTORY_WINDOW
    )
    env = bench.worker_env(
        POLL_INTERVAL_SECONDS=str(HISTORY_INTERVAL), POLL_MAX_SECONDS=str(HISTORY_WINDOW)
    )
    child = bench.spawn_worker("history", env)
    try:
        await bench.wait_ready(child)
        ids = [f"{SCHEDULE_IDS}{i:015d}" for i in range(n)]
        await bench.enqueue_ids(ids, settings)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await bench.redis.xlen(keys.events) >= n:
                break
            await asyncio.sleep(0.1)
    finally:
        child.stop()
    sizes: list[int] = []
    shapes: collections.Counter[tuple[int, int]] = collections.Counter()
    for cid in ids:
        raw = await bench.redis.get(keys.history(cid))
        events = parse_history(raw)
        checks = sum(e.kind is EventKind.CHECK for e in events)
        shapes[len(events), checks] += 1
        if len(events) == 8 and checks == 6:
            sizes.append(int(await bench.redis.memory_usage(keys.history(cid), samples=0) or 0))
    f.history_polls = len(sizes)
    f.history_bytes = sum(sizes) / len(sizes) if sizes else None
    out(
        f"  history bytes per 6-check poll: {fmt(f.history_bytes)} (MEMORY USAGE, mean of "
        f"{len(sizes)} polls with exactly enqueue + 6 checks + final, of {n})"
    )
    if len(sizes) < n:
        out(f"  (entries, checks) of each poll: {dict(shapes)}")


async def phase_million(bench: Bench) -> None:
    """A million in flight on one Redis: N containers enqueued through the CLI (one
    ``threads-poller enqueue`` reading ids on stdin), Redis memory per container, then the
    schedule phase's lateness run beside them, with their next checks parked an hour ahead
    (as between two checks: one worker cannot check a million a minute, and the run measures
    what a million in flight cost the others, not a backlog)."""
    from worker.store.keys import Keys

    n, f, keys = bench.cfg.million_n, bench.figures, Keys(PREFIX)
    out(f"\n[million] {n} containers enqueued through the CLI, default schedule")
    await bench.reset()
    ids_file = bench.tmp / "million-ids.txt"
    with ids_file.open("w") as fh:
        for i in range(n):
            fh.write(f"{CAPACITY_IDS}{i:015d}\n")
    used0 = int((await bench.redis.info("memory"))["used_memory"])
    t0 = time.monotonic()
    with ids_file.open("rb") as stdin:
        proc = await asyncio.create_subprocess_exec(
            *threads_poller_command(),
            "enqueue",
            stdin=stdin,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=bench.worker_env(),
            cwd=bench.tmp,
        )
        _, err = await proc.communicate()
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"enqueue exited {proc.returncode}: {err.decode()[-300:]}")
    used1 = int((await bench.redis.info("memory"))["used_memory"])
    in_flight = int(await bench.redis.zcard(keys.inflight))
    queued = int(await bench.redis.zcard(keys.queue))
    f.million_n, f.million_enqueue_s = in_flight, took
    f.million_bytes_per_container = (used1 - used0) / max(in_flight, 1)
    out(
        f"  threads-poller enqueue: {in_flight} in flight, {queued} jobs queued in "
        f"{took:.1f} s ({in_flight / took:.0f}/s); used_memory {used0 / 2**20:.1f} -> "
        f"{used1 / 2**20:.1f} MiB, {f.million_bytes_per_container:.0f} bytes per container"
    )
    # Park them: every queued check (all due now) an hour ahead, 10,000 per script call.
    park = bench.redis.register_script(
        "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],"
        " 'WITHSCORES', 'LIMIT', 0, 10000) "
        "for i = 1, #ids, 2 do redis.call('ZADD', KEYS[1], 'XX', ids[i + 1] + ARGV[2],"
        " ids[i]) end return #ids / 2"
    )
    seconds, micros = await bench.redis.time()
    cutoff = seconds * 1000 + micros // 1000 + PARK_MS // 2  # above every unparked score
    moved = 0
    while got := int(await park(keys=[keys.queue], args=[cutoff, PARK_MS])):
        moved += got
    out(f"  parked {moved} checks {PARK_MS / 1000:.0f} s ahead")
    # The lateness run at half one worker's rate, with the million in Redis.
    _p50, p99, worst = await phase_schedule(bench, fresh=False)
    used2 = int((await bench.redis.info("memory"))["used_memory"])
    f.million_late_p99, f.million_late_max = p99, worst
    f.million_rss_mib = bench.last_rss_mib
    out(
        f"  with {in_flight} in flight: lateness p99 {fmt(p99, '.3f')} s, max "
        f"{fmt(worst, '.3f')} s; worker RSS at the end {fmt(f.million_rss_mib, '.1f')} MiB; "
        f"used_memory {used2 / 2**20:.1f} MiB"
    )


async def mean_memory_usage(r: Redis, keys: Sequence[str]) -> float:
    sizes = [await r.memory_usage(k, samples=0) for k in keys]
    found = [s for s in sizes if s]
    return sum(found) / len(found) if found else math.nan
