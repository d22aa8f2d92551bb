"""The fault matrix's rows about Redis and the worker processes: writes refused (OOM),
connections killed, checks past the job timeout, a worker frozen past its lock, skewed clocks, a
worker SIGKILLed mid-check. (The rows about the API and the doors: ``bench.faults.rows_api``; the
list and what every row asserts: ``bench.faults.matrix``.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench.faults.harness import REPO_ROOT, SKEW_ENV, Expect, Harness, RowSpec, new_result
from bench.faults.invariants import gaps
from bench.faults.report import RowResult
from simulator import StatusCall

GAP_TOLERANCE_SECONDS = 0.05
# A check scheduled right at deadline + slack starts a poll delay and a claim later.
LATE_CALL_TOLERANCE_SECONDS = 0.3

SITECUSTOMIZE = f'''"""Clock skew for one process (bench/faults/rows.py): time.time() and
time.time_ns() run ${SKEW_ENV} seconds off; the monotonic clock, Redis and the simulator keep
real time."""
import os
import time

_skew = float(os.environ.get("{SKEW_ENV}") or 0)
if _skew:
    _real_time, _real_time_ns = time.time, time.time_ns

    def _time() -> float:
        return _real_time() + _skew

    def _time_ns() -> int:
        return _real_time_ns() + int(_skew * 1e9)

    time.time = _time
    time.time_ns = _time_ns
'''.replace("${SKEW_ENV}", SKEW_ENV)


# After the ~2 s refusal, this many short ones: each starts 5 ms before one container's answer
# goes out and ends as soon as Redis has refused a command (the record of that answer), so
# writes are back while the run that got the answer is still going.
OOM_BLIPS = 6


async def oom_refusals(r: Redis) -> int:
    info = await r.info("errorstats")
    return int(info.get("errorstat_OOM", {}).get("count", 0))


async def row_oom(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Redis refuses writes (maxmemory 1, noeviction) while status answers are in flight, so
    the record of their outcome is refused with OOM. First for ~2 s (n containers at once),
    then in blips around single answers, over as soon as a write was refused."""
    ids = h.ids("01", n)
    blip_ids = h.ids("21", OOM_BLIPS)
    h.script(ids + blip_ids, ["slow:0.5:FINISHED"])
    await h.start_workers(1)
    windows: list[tuple[float, float]] = []
    refused: list[str] = []
    blips_hit = 0

    async def refuse_writes(_call: StatusCall) -> None:
        await asyncio.sleep(0.2)
        await h.chaos.config_set("maxmemory", 1)
        start = time.time()
        try:
            await h.chaos.set(f"{h.prefix}:fault-matrix-probe", "1")
        except ResponseError as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(2.0)
        await h.chaos.config_set("maxmemory", 0)
        windows.append((start, time.time()))

    async def blip(call: StatusCall) -> None:
        nonlocal blips_hit
        await asyncio.sleep(max(0.0, call.t + call.delay - 0.005 - time.time()))
        before = await oom_refusals(h.chaos)
        await h.chaos.config_set("maxmemory", 1)
        start = time.time()
        give_up = time.monotonic() + 0.1
        while time.monotonic() < give_up:
            if await oom_refusals(h.chaos) > before:
                blips_hit += 1
                break
        await h.chaos.config_set("maxmemory", 0)
        windows.append((start, time.time()))

    long_done = h.on_first_call(ids, refuse_writes)
    await h.enqueue(ids, Expect("FINISHED"))
    await h.wait_fired(long_done)
    for cid in blip_ids:
        done = h.on_first_call([cid], blip)
        await h.enqueue([cid], Expect("FINISHED"))
        await h.wait_fired(done, 10)
        await asyncio.sleep(0.3)
    settled = await h.settle(give_up=40)
    hit: Counter[str] = Counter()
    for start, end in windows:
        hit.update(h.ledger.answered_between(start, end))
    h.disrupted.update(hit)
    result = await h.collect(new_result(spec), settled)
    long_s = windows[0][1] - windows[0][0] if windows else 0.0
    result.figures.update(
        {
            "refused s": f"{long_s:.1f}",
            "answers meanwhile": str(sum(hit[c] for c in ids)),
            "blips with a refused write": f"{blips_hit}/{OOM_BLIPS}",
        }
    )
    if not refused or "maxmemory" not in refused[0]:
        result.failures.append(f"invalid run: Redis did not refuse a write ({refused})")
    if not any(hit[c] for c in ids):
        result.failures.append("invalid run: no status answer came back while writes were refused")
    return result


async def row_conn_drop(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Client connections are killed (CLIENT KILL TYPE normal) every ~1 ms from 3 ms before
    each status answer goes out to 12 ms after it, while the outcomes are recorded and the
    checks re-scheduled (connections work again by the time the run is over); SCRIPT FLUSH
    once."""
    ids = h.ids("02", n)
    h.script(ids, ["slow:0.5:IN_PROGRESS", "slow:0.5:FINISHED"])
    await h.start_workers(1)
    windows: list[tuple[float, float]] = []
    killed = 0
    stop = asyncio.Event()

    def note(call: StatusCall) -> None:
        if call.container_id in h.expect:
            sent = call.t + call.delay
            windows.append((sent - 0.003, sent + 0.012))

    h.state.add_status_hook(note)

    async def drop_connections() -> None:
        nonlocal killed
        flushed = False
        while not stop.is_set():
            now = time.time()
            if any(a <= now <= b for a, b in windows):
                if not flushed:
                    await h.chaos.script_flush()
                    flushed = True
                killed += int(await h.chaos.client_kill_filter(_type="normal", skipme=True))
                await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(0.001)

    chaos = h.spawn(drop_connections())
    await h.enqueue(ids, Expect("FINISHED"))
    settled = await h.settle(give_up=40)
    stop.set()
    await chaos
    h.state.remove_status_hook(note)
    for cid in ids:
        h.disrupted[cid] = sum(c.answer != "drop" for c in h.ledger.of(cid))
    result = await h.collect(new_result(spec), settled)
    result.figures.update(
        {"connections killed": str(killed), "answers in kill windows": str(len(windows))}
    )
    if not killed:
        result.failures.append("invalid run: no connection was killed")
    return result


async def row_job_timeout(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """API_MAX_CONCURRENCY=1, JOB_TIMEOUT_SECONDS=2, answers take 0.9 s: most checks wait for
    the one API slot longer than the job timeout."""
    ids = h.ids("03", n)
    h.script(ids, ["slow:0.9:FINISHED"])
    await h.start_workers(1)
    await h.enqueue(ids, Expect("FINISHED", min_checks=1))
    settled = await h.settle(give_up=30 + n)
    result = await h.collect(new_result(spec), settled)
    checked = sum(1 for cid in ids if h.ledger.of(cid))
    result.figures.update(
        {"API_MAX_CONCURRENCY": "1", "answer s": "0.9", "checked": f"{checked}/{n}"}
    )
    return result


async def row_frozen(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Two workers; the one holding a container's lock is SIGSTOPped while its API call is in
    flight, until its locks expire and the other worker re-runs those checks; then SIGCONT."""
    ids = h.ids("04", n)
    # The first answer takes 0.8 s (under HTTP_TIMEOUT_SECONDS): it is sent while the holder
    # is stopped and waits in its socket; the poll is still live when the holder resumes.
    h.script(ids, ["slow:0.8:IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    await h.start_workers(2)
    info: dict[str, Any] = {}

    async def freeze(call: StatusCall) -> None:
        await asyncio.sleep(0.2)
        victim = await h.holder_of(call.container_id)
        if victim is None:
            info["error"] = "no worker holds the lock of the container being checked"
            return
        h.pool.freeze(victim)
        stopped_at = time.time()
        # Whatever happens below (a Redis error, a cancel at the row's budget), the victim is
        # resumed: a worker left stopped would hold its locks, and its SIGTERM, forever.
        try:
            frozen = await h.held_by(victim)
            info.update(victim=victim.name, frozen=frozen)
            ttl = max(frozen.values(), default=0) / 1000
            cap = time.monotonic() + ttl + 3.0
            while time.monotonic() < cap:
                rerun = [c for c in frozen if any(x.t > stopped_at for x in h.ledger.of(c))]
                if len(rerun) == len(frozen):
                    break
                await asyncio.sleep(0.05)
            info["rerun"] = [c for c in frozen if any(x.t > stopped_at for x in h.ledger.of(c))]
            await asyncio.sleep(0.3)
        finally:
            h.pool.resume(victim)
        info["frozen_s"] = time.time() - stopped_at
        info["ttl"] = ttl
        info["resumed"] = time.monotonic()

    froze = h.on_first_call(ids[:1], freeze)
    await h.enqueue(ids, Expect("FINISHED"))
    await h.wait_fired(froze)
    settled = await h.settle(give_up=60, not_before=float(info.get("resumed", 0)) + 1.5)
    frozen: dict[str, int] = info.get("frozen", {})
    h.disrupted.update(frozen.keys())
    result = await h.collect(new_result(spec), settled)
    rerun = info.get("rerun", [])
    result.figures.update(
        {
            "frozen containers": str(len(frozen)),
            "re-run while frozen": str(len(rerun)),
            "lock ms left at stop": f"{info.get('ttl', 0) * 1000:.0f}",
            "frozen s": f"{info.get('frozen_s', 0):.1f}",
        }
    )
    if "error" in info or not frozen:
        result.failures.append(f"invalid run: {info.get('error', 'no container was frozen')}")
    elif len(rerun) < len(frozen):
        result.failures.append(
            f"{len(frozen) - len(rerun)} frozen check(s) not re-run by the other worker within "
            "the lock's TTL + 3 s"
        )
    return result


def _clock_of(env: Mapping[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return float(out.stdout.strip()) - time.time()


async def row_clock_skew(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """Two workers whose time.time() runs 10 s ahead and 10 s behind (a sitecustomize shim);
    containers come in through the Python API and through the intake stream."""
    ids = h.ids("05", n)
    finishing, forever = ids[0::2], ids[1::2]
    h.script(finishing, ["IN_PROGRESS", "IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    h.script(forever, ["IN_PROGRESS"])
    shim = h.workdir / "clock-shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    envs = [
        {SKEW_ENV: repr(skew), "PYTHONPATH": f"{shim}{os.pathsep}{REPO_ROOT}"}
        for skew in (10.0, -10.0)
    ]
    measured = [await asyncio.to_thread(_clock_of, {**h.base_env, **e}) for e in envs]
    await h.start_workers(2, envs)
    enqueued_at: dict[str, float] = {}
    api = [cid for i, cid in enumerate(ids) if i % 4 < 2]
    via_intake = [cid for i, cid in enumerate(ids) if i % 4 >= 2]
    for group in (api, via_intake):
        for cid in group:
            expect = Expect("FINISHED", 4) if cid in finishing else Expect("TIMED_OUT", 2)
            enqueued_at[cid] = time.time()
            if group is api:
                await h.enqueue([cid], expect)
            else:
                await h.xadd([cid], expect)
    settled = await h.settle(give_up=30)
    result = await h.collect(new_result(spec), settled)
    interval, end = h.knobs.interval, h.knobs.window + h.knobs.slack + LATE_CALL_TOLERANCE_SECONDS
    all_gaps = [g for cid in ids for g in gaps([c.t for c in h.ledger.of(cid)])]
    short = [g for g in all_gaps if g < interval - GAP_TOLERANCE_SECONDS]
    late = [
        (cid, c.t - enqueued_at[cid])
        for cid in ids
        for c in h.ledger.of(cid)
        if c.t > enqueued_at[cid] + end
    ]
    one_check = h.timed_out_after_one_check()
    result.figures.update(
        {
            "skews s": "/".join(f"{m:+.1f}" for m in measured),
            "min gap s": f"{min(all_gaps):.3f}" if all_gaps else "-",
            "gaps < interval-50ms": str(len(short)),
            "calls past deadline+slack": str(len(late)),
            "TIMED_OUT after 1 check": str(one_check),
        }
    )
    if any(abs(abs(m) - 10.0) > 1.0 for m in measured):
        result.failures.append(f"invalid run: the clock shim did not skew the workers ({measured})")
    if short:
        result.failures.append(
            f"{len(short)} gaps between checks shorter than the interval - 50 ms (min "
            f"{min(short):.3f} s)"
        )
    if late:
        worst = max(late, key=lambda x: x[1])
        result.failures.append(
            f"{len(late)} calls after deadline + slack (worst {worst[0]} at +{worst[1]:.2f} s)"
        )
    if one_check:
        result.failures.append(f"{one_check} TIMED_OUT after 1 check")
    return result


async def row_sigkill(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """For comparison: the worker holding a container's lock is SIGKILLed mid-check and a
    new worker is started in its place."""
    ids = h.ids("11", n)
    h.script(ids, ["slow:0.6:FINISHED"])
    await h.start_workers(2)
    info: dict[str, Any] = {}

    async def kill(call: StatusCall) -> None:
        await asyncio.sleep(0.3)
        victim = await h.holder_of(call.container_id)
        if victim is None:
            info["error"] = "no worker holds the lock of the container being checked"
            return
        info["killed"] = await h.held_by(victim)
        await h.pool.kill(victim)
        await h.wait_workers_ready([await h.start_worker()])

    killed_one = h.on_first_call(ids[:1], kill)
    await h.enqueue(ids, Expect("FINISHED"))
    await h.wait_fired(killed_one)
    settled = await h.settle(give_up=60)
    killed: dict[str, int] = info.get("killed", {})
    h.disrupted.update(killed.keys())
    result = await h.collect(new_result(spec), settled)
    result.figures.update({"runs killed": str(len(killed))})
    if "error" in info or not killed:
        result.failures.append(f"invalid run: {info.get('error', 'no run was killed')}")
    return result
