"""The ``webhooks`` phase (issue 22): deliveries apart from checks. The same paced check load
runs alone, then beside HOOK_DELIVERIES deliveries to blackholed receivers, and how late its
checks came both times.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import socket
import time
from typing import Any

from bench import harness
from bench.harness import Child
from bench.measure import out, percentile
from bench.phases.figures import PREFIX, HookRun
from bench.phases.schedule import SCHEDULE_INTERVAL, SCHEDULE_WINDOW
from bench.phases.world import Bench

# A paced check load, alone and beside deliveries that hang.
HOOK_LOAD_IDS = "7"  # IN_PROGRESS forever, like the schedule phase's
HOOK_FINAL_IDS = "4"  # FINISHED on the first check (the simulator's default script)
HOOK_DELIVERIES = 1000
HOOK_RECEIVERS = 4  # blackholed receivers: listening sockets that never accept
HOOK_LOAD_PER_SECOND = 10.0  # containers/s of the paced load (5 checks each)
HOOK_SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 - the bench's own


async def phase_webhooks(bench: Bench) -> None:
    """Issue 22: deliveries apart from checks. The same paced check load (Poisson arrivals,
    IN_PROGRESS, interval 1 s, window 4 s) runs twice on a fresh worker: once alone, once
    right after HOOK_DELIVERIES containers went final with a webhook to a blackholed
    receiver (a socket that never accepts: each attempt hangs for WEBHOOK_TIMEOUT_SECONDS,
    then is retried). Lateness = the simulator's request arrival - the check's due time."""
    f = bench.figures
    duration = bench.cfg.schedule_seconds
    out(
        f"\n[webhooks] {HOOK_LOAD_PER_SECOND:g} containers/s for {duration:.0f} s "
        f"(IN_PROGRESS, interval {SCHEDULE_INTERVAL:g} s, window {SCHEDULE_WINDOW:g} s), "
        f"alone, then beside {HOOK_DELIVERIES} deliveries to {HOOK_RECEIVERS} blackholed "
        "receivers"
    )
    holes = [socket.socket() for _ in range(HOOK_RECEIVERS)]
    try:
        for hole in holes:
            hole.bind((harness.HOST, 0))
            hole.listen(4096)  # and never accept: connections wait in the backlog
        urls = [f"http://{harness.HOST}:{h.getsockname()[1]}/hook" for h in holes]
        for urls_of_run in ([], urls):
            run = await _hook_run(bench, urls_of_run, duration)
            f.hooks.append(run)
            label = f"beside {run.deliveries} hung deliveries" if run.deliveries else "alone"
            out(
                f"  {label:30} checks {run.checks:5} (containers never checked: "
                f"{run.unchecked}): lateness p50 {run.late_p50:.3f} s  "
                f"p99 {run.late_p99:.3f} s  max {run.late_max:.3f} s  "
                f"(1st checks p99 {run.first_p99:.3f} s); delivery attempts timed out "
                f"{run.attempts}, hung at the end {run.hung_now}"
            )
    finally:
        for hole in holes:
            hole.close()
    if len(f.hooks) == 2:
        a, b = f.hooks
        out(f"  p99 with - without: {b.late_p99 - a.late_p99:+.3f} s (target within 0.1 s)")


async def _hook_run(bench: Bench, urls: list[str], duration: float) -> HookRun:
    """One run on a fresh worker: HOOK_DELIVERIES containers go final with a webhook to one of
    ``urls`` (none: without one), then the paced load; its checks' lateness."""
    from worker.store.keys import Keys

    keys = Keys(PREFIX)
    await bench.reset()
    timing = {
        "poll_interval_seconds": SCHEDULE_INTERVAL,
        "poll_max_seconds": SCHEDULE_WINDOW,
        "webhook_secret": HOOK_SECRET,
        "webhook_allowed_hosts": harness.HOST,
    }
    settings = bench.settings(**timing)
    env = bench.worker_env(
        POLL_INTERVAL_SECONDS=str(SCHEDULE_INTERVAL),
        POLL_MAX_SECONDS=str(SCHEDULE_WINDOW),
        WEBHOOK_SECRET=HOOK_SECRET,
        WEBHOOK_ALLOWED_HOSTS=harness.HOST,
    )
    child = bench.spawn_worker("webhooks-with" if urls else "webhooks-alone", env)
    try:
        await bench.wait_ready(child)
        finals = await _deliveries_due(bench, child, urls, settings)
        # Every delivery is due now; give the worker a moment to start them.
        await asyncio.sleep(0.5)
        n = round(HOOK_LOAD_PER_SECOND * duration)
        ids = [f"{HOOK_LOAD_IDS}{i:015d}" for i in range(n)]
        await _paced_load(bench, ids, settings)
        total = len(finals) + len(ids)
        t_end = time.monotonic() + SCHEDULE_WINDOW + 60
        while time.monotonic() < t_end:
            if await bench.redis.xlen(keys.events) >= total:
                break
            await asyncio.sleep(0.1)
        # Deliveries running now: their runs' locks (whichever queue they came from).
        locks = "arq:in-progress:" + keys.webhook_job_prefix + "*"
        hung_now = len([k async for k in bench.redis.scan_iter(match=locks, count=1000)])
    finally:
        await child.astop()
    return await _measure(bench, ids, finals, urls, hung_now)


async def _deliveries_due(bench: Bench, child: Child, urls: list[str], settings: Any) -> list[str]:
    """HOOK_DELIVERIES containers (FINISHED at once) enqueued with their webhook URL, spread
    over ``urls``, and waited for until all are final: their ids."""
    from worker.client.producer import enqueue_many
    from worker.store.keys import Keys

    keys = Keys(PREFIX)
    finals = [f"{HOOK_FINAL_IDS}{i:015d}" for i in range(HOOK_DELIVERIES)]
    for k, url in enumerate(urls or [None]):
        mine = finals[k :: len(urls) or 1]
        await enqueue_many(bench.redis, mine, webhook_url=url, settings=settings)
    t_final = time.monotonic() + 60
    while await bench.redis.xlen(keys.events) < len(finals):
        if time.monotonic() > t_final or not child.alive():
            raise RuntimeError("the containers of the deliveries did not all go final")
        await asyncio.sleep(0.05)
    return finals


async def _paced_load(bench: Bench, ids: list[str], settings: Any) -> None:
    """Enqueue ``ids`` at HOOK_LOAD_PER_SECOND, at random (Poisson) times."""
    from worker.client.producer import enqueue_many

    rng = random.Random(22)
    arrivals = list(itertools.accumulate(rng.expovariate(HOOK_LOAD_PER_SECOND) for _ in ids))
    t0, sent = time.monotonic(), 0
    while sent < len(ids):
        upto = bisect.bisect_right(arrivals, time.monotonic() - t0, lo=sent)
        if upto > sent:
            await enqueue_many(bench.redis, ids[sent:upto], settings=settings)
            sent = upto
        if sent < len(ids):
            await asyncio.sleep(max(0.0, arrivals[sent] - (time.monotonic() - t0)))


async def _measure(
    bench: Bench, ids: list[str], finals: list[str], urls: list[str], hung_now: int
) -> HookRun:
    """The paced load's lateness as the simulator saw it, and the delivery attempts made."""
    from worker.store.keys import Keys

    keys = Keys(PREFIX)
    calls = (await bench.sim("GET", "/calls"))["containers"]
    async with bench.redis.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.hget(keys.result(cid), "enqueued_at")
        for cid in finals:
            pipe.hget(keys.result(cid), "webhook_attempts")
        rows = await pipe.execute()
    late_first: list[float] = []
    late_all: list[float] = []
    unchecked = 0
    for cid, enq in zip(ids, rows[: len(ids)], strict=True):
        times = sorted(calls.get(cid, {}).get("times", []))
        if not times or enq is None:
            unchecked += 1
            continue
        late_first.append(times[0] - float(enq))
        late_all += [times[0] - float(enq)]
        late_all += [b - a - SCHEDULE_INTERVAL for a, b in itertools.pairwise(times)]
    attempts = sum(int(a or 0) for a in rows[len(ids) :])
    return HookRun(
        deliveries=len(finals) if urls else 0,
        containers=len(ids),
        checks=len(late_all),
        unchecked=unchecked,
        late_p50=percentile(late_all, 50),
        late_p99=percentile(late_all, 99),
        late_max=max(late_all, default=math.nan),
        first_p99=percentile(late_first, 99),
        attempts=attempts,
        hung_now=hung_now,
    )
