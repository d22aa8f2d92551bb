"""The ``paced`` phase of bench/bench.py: what pacing costs the worker (issue 22, item 4).

One workload, each run drained by a fresh ``threads-poller worker``: ``--paced-n`` containers
(6,000; ``--quick`` 3,000) spread over
``--paced-accounts`` accounts, every account's alternately FINISHED on the first check and
IN_PROGRESS once then FINISHED (``POLL_INTERVAL_SECONDS=1``, so the second check goes through
record.lua's pacing too), enqueued with ``enqueue_many`` once the worker has published its
pacing. Three runs:

``burst``    ``ACCOUNT_MAX_REQUESTS_PER_SECOND=0``, all enqueued at once: every check due at
             once, the worker at full speed (the reference of the target).
``paced``    ``--paced-rate`` per account, all enqueued at once: each check due at its account's
             slot, so the burst drains at accounts x rate checks a second.
``trickle``  ``ACCOUNT_MAX_REQUESTS_PER_SECOND=0`` again, the containers enqueued at the paced
             run's rate (accounts x rate / 1.5 a second: 1.5 checks each): the same work at the
             same pace without pacing, which tells pacing's own cost from that of running slowly.

Per run: worker CPU per container and per check between 10 % and 90 % of the final events, job
runs per check (the ``runs`` the claims counted over the ``checks`` recorded, summed over the
containers), API calls per container, Redis round trips and script calls per check.
Targets: paced CPU per container <= 1.2 x burst, runs per check <= 1.05.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.harness import Child
from bench.measure import (
    Progress,
    RedisDelta,
    counters_delta,
    describe_commands,
    fmt,
    out,
    redis_counters,
    track,
)

if TYPE_CHECKING:
    from bench.phases import Bench

PACED_IDS = ("3", "4")  # FINISHED at once (the simulator's default), IN_PROGRESS then FINISHED
CHECKS_PER_CONTAINER = 1.5
INTERVAL_S = 2.0
WINDOW_S = 10.0
# The worker's claim gap at that interval (worker.runtime.app.claim_gap): the floor's control
# starts its checks on these ticks, as the worker's claims start its.
CLAIM_GAP_S = min(0.2, INTERVAL_S / 10) / 2
TARGET_CPU_RATIO = 1.2
TARGET_RUNS_PER_CHECK = 1.05


@dataclass
class PacedRun:
    label: str
    rate: float  # per account; 0: unpaced
    n: int
    done: int
    checks_per_s: float | None
    cpu_ms_per_container: float | None
    cpu_ms_per_check: float | None
    redis_ms_per_container: float | None
    runs_per_check: float | None
    calls_per_container: float
    wall: float | None
    reads_per_check: float
    scripts_per_check: float


def cpu_ratio(a: PacedRun | None, b: PacedRun | None) -> float | None:
    """Worker CPU per container of ``a`` over ``b``."""
    if a is None or b is None or not a.cpu_ms_per_container or not b.cpu_ms_per_container:
        return None
    return a.cpu_ms_per_container / b.cpu_ms_per_container


async def phase_paced(bench: Bench) -> list[PacedRun]:
    cfg = bench.cfg
    n, accounts, rate = cfg.paced_n, cfg.paced_accounts, cfg.paced_rate
    out(
        f"\n[paced] {n} containers over {accounts} accounts (half FINISHED at once, half "
        f"IN_PROGRESS then FINISHED, interval {INTERVAL_S:g} s): a burst unpaced, the burst at "
        f"{rate:g} req/s per account ({accounts * rate:g} checks/s in all), and a trickle "
        "unpaced at that rate"
    )
    runs = [
        await _one_run(bench, "burst", 0.0, trickle=0.0),
        await _one_run(bench, "paced", rate, trickle=0.0),
        await _one_run(bench, "trickle", 0.0, trickle=accounts * rate / CHECKS_PER_CONTAINER),
    ]
    burst, paced, trickle = runs
    # The control: the floor (no job system, bench/baselines.py) for as many checks, all at
    # once and then at the paced run's rate. What it pays more per check at that rate is what
    # any process pays on this machine for running slowly (wake-ups, cold caches), not pacing.
    checks = int(n * CHECKS_PER_CONTAINER)
    floors = [
        await _floor_run(bench, "floor-burst", checks, 0.0),
        await _floor_run(bench, "floor-paced", checks, accounts * rate, CLAIM_GAP_S),
    ]
    bench.figures.paced_floor = floors
    floor_ratio = floors[1] / floors[0] if floors[0] is not None and floors[1] is not None else None
    out(
        f"  worker CPU per container paced / burst: {fmt(paced.cpu_ms_per_container, '.3f')} / "
        f"{fmt(burst.cpu_ms_per_container, '.3f')} ms = {fmt(cpu_ratio(paced, burst), '.2f')} x "
        f"(target <= {TARGET_CPU_RATIO:g}); paced / trickle at the same rate "
        f"{fmt(cpu_ratio(paced, trickle), '.2f')} x; runs per check paced "
        f"{fmt(paced.runs_per_check, '.3f')} (target <= {TARGET_RUNS_PER_CHECK:g})"
    )
    ratio = cpu_ratio(paced, burst)
    beyond = None if ratio is None or not floor_ratio else ratio / floor_ratio
    out(
        f"  the floor's CPU per check at {accounts * rate:g}/s / all at once: "
        f"{fmt(floor_ratio, '.2f')} x; so paced / burst beyond what running at that rate costs "
        f"any process here: {fmt(beyond, '.2f')} x"
    )
    bench.figures.paced = runs
    return runs


async def _one_run(bench: Bench, label: str, pace: float, *, trickle: float) -> PacedRun:
    """One run on a fresh worker paced at ``pace`` per account (0: unpaced): the containers
    enqueued at once (``trickle`` 0) or at ``trickle`` a second, until all are final."""
    from bench.phases import PREFIX
    from worker.client.client import PollerClient
    from worker.store.keys import Keys

    cfg, keys = bench.cfg, Keys(PREFIX)
    n, accounts = cfg.paced_n, cfg.paced_accounts
    child, prof = await _start_worker(bench, label, pace)
    # Container i is account i % accounts's; each account gets both kinds, alternately.
    ids = [f"{PACED_IDS[i // accounts % 2]}{i:015d}" for i in range(n)]
    settings = bench.settings(
        poll_interval_seconds=INTERVAL_S,
        poll_max_seconds=WINDOW_S,
        account_max_requests_per_second=pace,
    )
    client = PollerClient.from_settings(settings, bench.redis)
    before = await redis_counters(bench.redis)
    cpu0 = bench.cpu_snapshot(child)
    t0 = time.monotonic()
    if trickle:
        feeder = asyncio.create_task(_trickle(client, ids, accounts, trickle))
        batches = n  # about one enqueue call per container
    else:
        batches = await _burst(client, ids, accounts)
        feeder = None
        out(f"  {label}: enqueued {n} in {time.monotonic() - t0:.1f} s")

    async def count() -> int:
        return int(await bench.redis.xlen(keys.events))

    drain = n / (accounts * pace) * CHECKS_PER_CONTAINER if pace else 0.0
    prog = await track(
        count,
        n,
        spawned=t0,
        children=[child],
        redis_pid=bench.redis_pid,
        sim_pid=bench.sim_pid,
        limit_s=120.0 + drain + (n / trickle if trickle else 0.0),
    )
    cpu1 = bench.cpu_snapshot(child)
    after = await redis_counters(bench.redis)
    if feeder is not None:
        batches = await feeder
    child.stop()
    if prof is not None:
        prof.stop()
    calls = await bench.sim("GET", "/calls")
    runs, checks = await _runs_and_checks(bench, ids)
    # The worker's own: less this script's enqueue calls and its polling (the commands inside
    # the enqueue scripts stay in, they are few next to a check's).
    delta = counters_delta(before, after, own_reads=prog.polls + 1 + batches)
    delta.commands["evalsha"] = delta.commands.get("evalsha", 0) - n
    if prog.done < n:
        bench.figures.notes.append(f"paced ({label}): only {prog.done}/{n} final")
        out(f"  ! only {prog.done}/{n} final; worker log tail:\n{child.tail()}")
    result = _paced_run(label, pace, prog, (runs, checks), int(calls["status_calls"]), delta)
    _report_run(result, prog, (runs, checks), delta)
    out(f"  {label}: CPU while running: {bench.cpu_line(cpu0, cpu1)}")
    return result


async def _start_worker(bench: Bench, label: str, pace: float) -> tuple[Child, Child | None]:
    """A fresh Redis and worker (paced at ``pace``), ready, with its profiler if asked for."""
    n = bench.cfg.paced_n
    await bench.reset()
    await bench.sim("PUT", f"/scripts/{PACED_IDS[1]}*", {"steps": ["IN_PROGRESS", "FINISHED"]})
    env = bench.worker_env(
        ACCOUNT_MAX_REQUESTS_PER_SECOND=str(pace),
        POLL_INTERVAL_SECONDS=str(INTERVAL_S),
        POLL_MAX_SECONDS=str(WINDOW_S),
        EVENTS_MAX_LEN=str(max(100_000, 2 * n)),
    )
    child = bench.spawn_worker(label, env)
    await bench.wait_ready(child)  # it has published its pacing: enqueue follows it
    return child, bench.start_profiler(child, label)


async def _runs_and_checks(bench: Bench, ids: list[str]) -> tuple[int, int]:
    """The job runs the claims counted and the checks recorded, summed over ``ids``."""
    from bench.phases import PREFIX
    from worker.store.keys import Keys

    keys = Keys(PREFIX)
    runs = checks = 0
    for i in range(0, len(ids), 5000):
        async with bench.redis.pipeline(transaction=False) as pipe:
            for cid in ids[i : i + 5000]:
                pipe.hmget(keys.result(cid), ["runs", "checks"])
            for r, c in await pipe.execute():
                runs += int(r or 0)
                checks += int(c or 0)
    return runs, checks


def _paced_run(
    label: str,
    pace: float,
    prog: Progress,
    runs_checks: tuple[int, int],
    status_calls: int,
    delta: RedisDelta,
) -> PacedRun:
    """The run's figures; ``delta``'s evalsha already counts the worker's script calls only."""
    runs, checks = runs_checks
    n = prog.n
    cpu_c = prog.cpu_ms_per_item
    per = max(checks, 1)
    return PacedRun(
        label=label,
        rate=pace,
        n=n,
        done=prog.done,
        checks_per_s=None if prog.steady_rate is None else prog.steady_rate * checks / n,
        cpu_ms_per_container=cpu_c,
        cpu_ms_per_check=None if cpu_c is None or not checks else cpu_c * n / checks,
        redis_ms_per_container=prog.redis_cpu_ms_per_item,
        runs_per_check=runs / checks if checks else None,
        calls_per_container=status_calls / n,
        wall=prog.wall,
        reads_per_check=delta.reads / per,
        scripts_per_check=delta.commands["evalsha"] / per,
    )


def _report_run(
    result: PacedRun, prog: Progress, runs_checks: tuple[int, int], delta: RedisDelta
) -> None:
    """The run's lines: its rate and CPU, then its runs per check and Redis work per check."""
    label, n = result.label, result.n
    runs, checks = runs_checks
    out(
        f"  {label}: done {prog.done}/{n} in {fmt(prog.wall, '.1f')} s; checks/s "
        f"{fmt(result.checks_per_s)} (10-90 %); worker CPU "
        f"{fmt(result.cpu_ms_per_container, '.3f')} ms per container, "
        f"{fmt(result.cpu_ms_per_check, '.3f')} ms per check; redis-server "
        f"{fmt(result.redis_ms_per_container, '.3f')} ms per container"
    )
    out(
        f"  {label}: {checks} checks, {runs} job runs: {fmt(result.runs_per_check, '.3f')} runs "
        f"per check; API calls per container {result.calls_per_container:.3f}; per check "
        f"{result.reads_per_check:.2f} Redis round trips, {result.scripts_per_check:.2f} script "
        f"calls; commands {describe_commands(delta, max(checks, 1))}"
    )


async def _burst(client: object, ids: list[str], accounts: int) -> int:
    """Every account's containers at once, 1,000 per call; returns the calls made."""
    from worker.client.client import PollerClient

    assert isinstance(client, PollerClient)
    per_account: dict[str, list[str]] = {}
    for i, cid in enumerate(ids):
        per_account.setdefault(str(1000 + i % accounts), []).append(cid)
    calls = 0
    for account, batch in per_account.items():
        for i in range(0, len(batch), 1000):
            await client.enqueue_many(batch[i : i + 1000], account=account)
            calls += 1
    return calls


async def _trickle(client: object, ids: list[str], accounts: int, per_second: float) -> int:
    """The containers in id order at ``per_second``, every 20 ms what is due by then, one call
    per account in each step; returns the calls made."""
    from worker.client.client import PollerClient

    assert isinstance(client, PollerClient)
    start, sent, calls = time.monotonic(), 0, 0
    while sent < len(ids):
        due = min(len(ids), int((time.monotonic() - start) * per_second) + 1)
        step: dict[str, list[str]] = {}
        for i in range(sent, due):
            step.setdefault(str(1000 + i % accounts), []).append(ids[i])
        for account, batch in step.items():
            await client.enqueue_many(batch, account=account)
            calls += 1
        sent = due
        await asyncio.sleep(0.02)
    return calls


async def _floor_run(
    bench: Bench, label: str, checks: int, per_second: float, tick: float = 0.0
) -> float | None:
    """The floor's CPU ms per check (10-90 %) for ``checks`` checks at ``per_second``, started
    on ``tick``s."""
    await bench.reset()
    _child, prog, _delta, cpu0, cpu1, code = await bench.run_floor(label, checks, per_second, tick)
    if prog.done < checks or code not in (0, None):
        bench.figures.notes.append(f"paced ({label}): {prog.done}/{checks}, exit {code}")
    out(
        f"  {label}: {checks} checks "
        f"{'all at once' if not per_second else f'at {per_second:g}/s, {tick:g} s ticks'} in "
        f"{fmt(prog.wall, '.1f')} s; floor process CPU {fmt(prog.cpu_ms_per_item, '.3f')} ms "
        f"per check; redis-server {fmt(prog.redis_cpu_ms_per_item, '.3f')} ms"
    )
    out(f"  {label}: CPU while running: {bench.cpu_line(cpu0, cpu1)}")
    return prog.cpu_ms_per_item
