"""The fault matrix's rows about the Threads API and the service's doors: a throttle storm of
one account, a paced burst, a forced re-enqueue while a webhook delivery waits, an intake entry
delivered twice, a container that does not exist once. (The rows about Redis and the workers:
``bench.faults.rows``; the list and what every row asserts: ``bench.faults.matrix``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bench.faults.harness import ACCOUNT, Expect, Harness, RowSpec, new_result
from bench.faults.invariants import calls_ahead_of_pace, is_throttled, max_in_window
from bench.faults.report import RowResult
from worker.store.keys import INTAKE_GROUP

DEAD_CONSUMER = "fault-matrix-dead-consumer"
# How late the first paced call may be (so the rest seem early, counted from it): the pacing
# row's tolerance.
PACE_TOLERANCE_S = 1.0


async def row_throttle_storm(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """n containers of one account, checked at once; every first answer is Graph code 4
    (throttled), all of them in flight together."""
    ids = h.ids("06", n)
    h.script(ids, ["FINISHED"])
    h.state.set_account_override(ACCOUNT, "slow:0.4:throttle", times=n)
    await h.start_workers(2)
    levels: list[int] = []
    untils: list[float] = []
    stop = asyncio.Event()

    async def watch_account() -> None:
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                level, until = await h.redis.hmget(  # type: ignore[misc]
                    h.keys.account(ACCOUNT), ["throttle_level", "throttled_until"]
                )
                if level is not None:
                    levels.append(int(float(level)))
                if until:
                    untils.append(float(until))
            await asyncio.sleep(0.02)

    watcher = h.spawn(watch_account())
    await h.enqueue(ids, Expect("FINISHED"), account=ACCOUNT)
    settled = await h.settle(give_up=40)
    stop.set()
    await watcher
    result = await h.collect(new_result(spec), settled)
    storm = [c for c in h.ledger.calls if is_throttled(c.answer)]
    first_sent = min((c.t + c.delay for c in storm), default=0.0)
    together = sum(c.t < first_sent for c in storm)
    base = h.knobs.throttle_backoff
    pause = max(untils) - first_sent if untils else 0.0
    max_level = max(levels, default=0)
    result.figures.update(
        {
            "throttled answers": str(len(storm)),
            "in flight together": str(together),
            "max throttle_level": str(max_level),
            "pause s": f"{pause:.2f}",
            "backoff base/max s": f"{base:g}/{h.knobs.throttle_backoff_max:g}",
        }
    )
    if together < 0.9 * n:
        result.failures.append(f"invalid run: only {together} of {n} throttled calls overlapped")
    if max_level != 1:
        result.failures.append(f"throttle_level rose to {max_level} for one episode (expected 1)")
    if not 0.75 * base <= pause <= 1.5 * base:
        result.failures.append(
            f"the account paused {pause:.2f} s (expected ~THROTTLE_BACKOFF_SECONDS {base:g})"
        )
    return result


async def row_pacing(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """n containers of one account enqueued at once, ACCOUNT_MAX_REQUESTS_PER_SECOND=50: the
    account's requests are paced; half answer IN_PROGRESS first."""
    ids = h.ids("07", n)
    h.script(ids[0::2], ["FINISHED"])
    h.script(ids[1::2], ["IN_PROGRESS", "FINISHED"])
    await h.start_workers(2)
    await h.enqueue(ids, Expect("FINISHED"), account=ACCOUNT)
    limit = h.knobs.pace
    settled = await h.settle(give_up=1.5 * n / limit + 30)
    result = await h.collect(new_result(spec), settled)
    times = [c.t for c in h.ledger.calls if c.account == ACCOUNT]
    peak = max_in_window(times)
    ahead = calls_ahead_of_pace(times, limit)
    # Slots are one request each, due one after another at the pace. A call may run late (a
    # loaded machine claims several due slots at once and fires them together, which packs a
    # 1 s window by up to its lateness: 68-76 calls in 1 s at load 2.5-4 on 2 cores), never
    # early. So the k-th call is no sooner than k slots after the first one's slot; counted
    # from the first call (itself late by up to its lateness), at most PACE_TOLERANCE_S of calls
    # ahead. A window's peak only fails the row when gross (twice the pace): the cumulative
    # count is what pacing promises. (Runs do not re-check pacing at call time: README,
    # Configuration.)
    allowed_ahead = limit * PACE_TOLERANCE_S + 1
    gross = 2 * limit + 1
    span = max(times) - min(times) if len(times) > 1 else 0.0
    result.figures.update(
        {
            "limit /s": f"{limit:g}",
            "peak calls in 1 s": str(peak),
            "most calls ahead of the pace": str(ahead),
            "mean /s": f"{len(times) / span:.1f}" if span else "-",
            "TIMED_OUT after 1 check": str(h.timed_out_after_one_check()),
        }
    )
    if ahead > allowed_ahead:
        result.failures.append(
            f"{ahead} calls of the account ahead of {limit:g}/s counted from the first call > "
            f"{allowed_ahead:g} ({PACE_TOLERANCE_S:g} s of lateness of the first call + 1)"
        )
    if peak > gross:
        result.failures.append(
            f"{peak} calls of the account within 1 s > {gross:g} (2 x limit + 1)"
        )
    return result


class WebhookReceiver:
    """A loopback receiver that answers 500 until ``recover()``, then 200; logs every POST."""

    def __init__(self) -> None:
        self.failing = True
        self.deliveries: list[tuple[str, int, float]] = []  # (delivery id, status, time)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def recover(self) -> None:
        self.failing = False

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        status = 500 if self.failing else 200
        delivery = request.headers.get("X-Threads-Poller-Delivery", "")
        self.deliveries.append((delivery, status, time.time()))
        return web.Response(status=status)

    def attempts(self, cid: str, generation: str) -> list[int]:
        suffix = f":{cid}:{generation}"
        return [s for d, s, _ in self.deliveries if d.endswith(suffix)]

    def delivered(self, cid: str, generation: str) -> bool:
        return any(200 <= s < 300 for s in self.attempts(cid, generation))


async def _wait_for(predicate: Callable[[], Awaitable[bool]], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def row_webhook_force(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """A container goes final while its webhook receiver fails (HTTP 500), its delivery waits
    for a retry, and it is re-enqueued with force; then the receiver recovers."""
    ids = h.ids("08", n)
    h.script(ids, ["FINISHED"])
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        return await _webhook_force(h, spec, ids, receiver)
    finally:
        await receiver.stop()


async def _webhook_force(
    h: Harness, spec: RowSpec, ids: list[str], receiver: WebhookReceiver
) -> RowResult:
    await h.start_workers(1)
    await h.enqueue(ids, Expect("FINISHED", polls=2), webhook_url=receiver.url)
    first: dict[str, str] = {}

    async def first_attempted() -> bool:
        for cid in ids:
            if await h.hash_field(cid, "final") == "1":
                first[cid] = await h.hash_field(cid, "generation") or ""
        return len(first) == len(ids) and all(receiver.attempts(c, first[c]) for c in ids)

    ok1 = await _wait_for(first_attempted, 15)
    pending1 = [cid for cid in ids if first.get(cid) and not receiver.delivered(cid, first[cid])]
    for cid in ids:
        runs = await h.hash_field(cid, "runs")
        h.extra_runs.append(int(runs) if runs and runs.isdigit() else None)
    outcomes = await h.enqueue(
        ids, Expect("FINISHED", polls=2), force=True, webhook_url=receiver.url
    )
    second: dict[str, str] = {}

    async def second_attempted() -> bool:
        for cid in ids:
            gen = await h.hash_field(cid, "generation") or ""
            if gen != first.get(cid) and await h.hash_field(cid, "final") == "1":
                second[cid] = gen
        return len(second) == len(ids) and all(receiver.attempts(c, second[c]) for c in ids)

    ok2 = await _wait_for(second_attempted, 15)
    await asyncio.sleep(0.2)
    receiver.recover()

    async def dead_letters() -> Counter[str]:
        counts: Counter[str] = Counter()
        for _id, f in await h.redis.xrange(h.keys.webhook_dead_letters, "-", "+"):
            fields = {k.decode(): v.decode("utf-8", "replace") for k, v in f.items()}
            who = fields.get("container_id", "")
            gen = fields.get("generation") or fields.get("delivery_id", "").rsplit(":", 1)[-1]
            counts[f"{who}:{gen}" if gen else who] += 1
        return counts

    def resolved(cid: str, gen: str, dead: Counter[str]) -> bool:
        return receiver.delivered(cid, gen) or dead[f"{cid}:{gen}"] > 0

    def unresolved(dead: Counter[str]) -> list[tuple[str, str]]:
        # Dead letters without a generation are matched to the generations by count.
        left = []
        spare = Counter({k: v for k, v in dead.items() if ":" not in k})
        for cid in ids:
            for gen in (first.get(cid, ""), second.get(cid, "")):
                if not gen or resolved(cid, gen, dead):
                    continue
                if spare[cid] > 0:
                    spare[cid] -= 1
                    continue
                left.append((cid, gen))
        return left

    async def all_resolved() -> bool:
        return not unresolved(await dead_letters())

    # WEBHOOK_MAX_ATTEMPTS 5 with a 0.3 s back-off doubling: ~4.5 s to the last attempt.
    await _wait_for(all_resolved, 15)
    settled = await h.settle(give_up=10)
    left = unresolved(await dead_letters())
    result = await h.collect(new_result(spec), settled)
    dropped1 = [cid for cid, gen in left if gen == first.get(cid)]
    dropped2 = [cid for cid, gen in left if gen == second.get(cid)]
    made1 = sum(receiver.delivered(c, first[c]) for c in ids if c in first)
    made2 = sum(receiver.delivered(c, second[c]) for c in ids if c in second)
    result.figures.update(
        {
            "gen1 waiting at force": str(len(pending1)),
            "force outcomes": ",".join(sorted(set(outcomes))),
            "gen1 delivered/dead/dropped": f"{made1}/{len(ids) - made1 - len(dropped1)}/"
            f"{len(dropped1)}",
            "gen2 delivered/dead/dropped": f"{made2}/{len(ids) - made2 - len(dropped2)}/"
            f"{len(dropped2)}",
            "POSTs": str(len(receiver.deliveries)),
        }
    )
    if not ok1 or len(pending1) < len(ids):
        result.failures.append("invalid run: not every first delivery was failing at the force")
    if not ok2:
        result.failures.append("the forced polls did not all end with a delivery attempt")
    if dropped1:
        result.failures.append(
            f"{len(dropped1)} first-generation deliveries neither made nor dead-lettered"
        )
    if dropped2:
        result.failures.append(
            f"{len(dropped2)} second-generation deliveries neither made nor dead-lettered"
        )
    return result


class _Died(Exception):
    """The fake consumer dies at its acknowledgement."""


class _DiesAtAck:
    """A Redis client for the intake consumer that dies where it would acknowledge."""

    def __init__(self, real: Redis) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name in ("xack", "xdel", "pipeline", "xautoclaim", "xclaim", "transaction"):
            raise _Died(name)
        return getattr(self._real, name)


async def deliver_and_die(h: Harness, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> str:
    """What a consumer that took ``entries`` did before dying: its own processing up to the
    acknowledgement (``IntakeConsumer.process``); if that wrote no poll, the enqueue the
    consumer does (``parse_entry`` + ``ResultStore.enqueue``)."""
    from worker.client.producer import store_for
    from worker.runtime.intake import IntakeConsumer, parse_entry

    store = store_for(h.redis, h.settings)
    with contextlib.suppress(_Died):
        consumer = IntakeConsumer(
            cast(Redis, _DiesAtAck(h.redis)),
            store,
            consumer=DEAD_CONSUMER,
            batch_size=100,
            claim_idle_seconds=h.knobs.claim_idle,
            max_entry_bytes=h.settings.intake_max_entry_bytes,
        )
        await consumer.process(entries)
    ids = [e[1][b"container_id"].decode() for e in entries]
    if all([await h.hash_field(cid, "generation") for cid in ids]):
        return "IntakeConsumer.process up to its XACK"
    await store.enqueue([parse_entry(f, max_bytes=4096) for _, f in entries])
    return "parse_entry + ResultStore.enqueue"


async def row_intake_replay(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """An intake entry with force 1 is delivered twice: a consumer enqueued it and died before
    its XACK; a live worker takes the entry over after INTAKE_CLAIM_IDLE_SECONDS."""
    ids = h.ids("09", n)
    h.script(ids, ["FINISHED"])
    with contextlib.suppress(ResponseError):
        await h.redis.xgroup_create(h.keys.intake, INTAKE_GROUP, id="0", mkstream=True)
    for cid in ids:
        h.expect[cid] = Expect("FINISHED")
        await h.redis.xadd(h.keys.intake, {"container_id": cid, "force": "1"})
    reply = await h.redis.xreadgroup(
        INTAKE_GROUP, DEAD_CONSUMER, {h.keys.intake: ">"}, count=len(ids)
    )
    entries: list[tuple[bytes, dict[bytes, bytes]]] = [e for _s, batch in reply for e in batch]
    how = await deliver_and_die(h, entries)
    gen0 = {cid: await h.hash_field(cid, "generation") or "" for cid in ids}
    for cid in ids:
        h.live_from[cid] = time.monotonic()
    h.start_monitor()
    await h.start_workers(1)
    # The dead consumer's entries become claimable INTAKE_CLAIM_IDLE_SECONDS from now.
    await h.redis.xclaim(
        h.keys.intake, INTAKE_GROUP, DEAD_CONSUMER, 0, [e[0] for e in entries], justid=True
    )
    acked_at: float | None = None

    async def acked() -> bool:
        nonlocal acked_at
        summary = await h.redis.xpending(h.keys.intake, INTAKE_GROUP)
        if int(summary["pending"]) == 0:
            acked_at = time.monotonic()
            return True
        return False

    await _wait_for(acked, h.knobs.claim_idle + 15)
    first_final = {cid: h.first_final.get(cid) for cid in ids}
    await asyncio.sleep(0.3)
    settled = await h.settle(give_up=15, not_before=time.monotonic() + 1.0)
    pending = int((await h.redis.xpending(h.keys.intake, INTAKE_GROUP))["pending"])
    gens = {cid: await h.hash_field(cid, "generation") or "" for cid in ids}
    result = await h.collect(new_result(spec), settled)
    polled_twice = [cid for cid in ids if gens[cid] != gen0[cid]]
    early = [cid for cid, t in first_final.items() if t is None or acked_at is None or t > acked_at]
    result.figures.update(
        {
            "first delivery": how,
            "replays taken over": str(len(ids) if acked_at is not None else 0),
            "polls": str(len(ids) + len(polled_twice)),
            "intake pending": str(pending),
        }
    )
    if acked_at is None or pending:
        result.failures.append("the replayed entries were not taken over and acknowledged")
    elif early:
        result.failures.append(
            f"invalid run: {len(early)} replay(s) came before the first poll was final"
        )
    if polled_twice:
        result.failures.append(f"{len(polled_twice)} container(s) polled twice for one entry")
    return result


async def row_notfound_once(h: Harness, spec: RowSpec, n: int) -> RowResult:
    """The API answers code 100 / subcode 33 (does not exist) once, then FINISHED."""
    ids = h.ids("10", n)
    h.script(ids, ["notfound", "FINISHED"])
    await h.start_workers(1)
    await h.enqueue(ids, Expect("FINISHED"))
    settled = await h.settle(give_up=20)
    result = await h.collect(new_result(spec), settled)
    failed = sum(1 for d in result.details if "got FAILED" in d)
    result.figures.update({"FAILED": str(failed)})
    return result
