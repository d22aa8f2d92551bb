"""Issue 22, item 2: webhook deliveries apart from checks.

A receiver that hangs (a blackhole: it accepts and never answers) holds each delivery for
WEBHOOK_TIMEOUT_SECONDS. Deliveries have their own queue, their own claim and their own job
slots (WEBHOOK_CONCURRENCY), so hung deliveries never hold a check's slot; they are still
retried and dead-lettered as before. A delivery left in the shared queue by an earlier release
is handed over to the deliveries' queue and delivered, its attempts not counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.receivers import webhook_receiver
from tests.helpers.waiting import final_of, wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_webhooks import hook_settings
from worker import enqueue, get_result
from worker.core.webhooks import body_for
from worker.store.jobdata import DELIVER_FUNCTION, encode_job
from worker.store.keys import Keys
from worker.store.queue import Claim, JobQueue

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()


@dataclass
class Blackhole:
    """A receiver that accepts connections and never answers them."""

    url: str = ""
    accepted: list[float] = field(default_factory=list)  # time.time() of each connection
    open_now: int = 0
    most_open: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[Blackhole]:
    hole = Blackhole()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hole.accepted.append(time.time())
        hole.writers.append(writer)
        hole.open_now += 1
        hole.most_open = max(hole.most_open, hole.open_now)
        try:
            # Read and drop the request; answer nothing until the client gives up.
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            hole.open_now -= 1

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hole.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hole
    finally:
        server.close()
        for writer in hole.writers:
            writer.close()
        await server.wait_closed()


async def test_deliveries_hung_on_a_blackhole_hold_no_check_slot(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """Two check slots, two delivery slots, four deliveries to a receiver that never answers:
    polls enqueued while both delivery slots hang get their first check long before any
    delivery's timeout could free a slot (before issue 22 they waited for one: deliveries and
    checks shared the slots). The hung deliveries are retried, then dead-lettered."""
    timeout = 2.0
    settings = hook_settings(
        settings,
        worker_max_jobs=2,
        webhook_concurrency=2,
        webhook_timeout_seconds=timeout,
        webhook_max_attempts=2,
        webhook_backoff_seconds=0.1,
    )
    hung = ["9611", "9612", "9613", "9614"]
    fresh = ["9621", "9622", "9623"]
    for cid in [*hung, *fresh]:
        sim.state.set_script(cid, ["FINISHED"])
    async with blackhole() as hole:
        for cid in hung:
            await enqueue(redis, cid, webhook_url=hole.url, settings=settings)
        async with running_worker(settings):
            # Both delivery slots hang on the blackhole.
            await wait_until(lambda: hole.open_now >= 2, timeout=10)
            first_hang = hole.accepted[0]
            for cid in fresh:
                await enqueue(redis, cid, settings=settings)
            for cid in fresh:
                await wait_until(lambda c=cid: sim.state.calls_for(c).count >= 1, timeout=10)

            async def all_dead() -> bool:
                for cid in hung:
                    r = await get_result(redis, cid, settings=settings)
                    if r is None or r.webhook_status != "dead":
                        return False
                return True

            await wait_until(all_dead, timeout=30)
        first_checks = {cid: sim.state.calls_for(cid).times[0] for cid in fresh}
    # No slot of the deliveries could have freed before first_hang + timeout; the checks did not
    # wait for one (0.5 s of slack for a busy machine).
    late = {c: round(t - first_hang, 3) for c, t in first_checks.items() if t >= first_hang + 1.5}
    assert not late, f"first checks waited for a hung delivery's slot: {late}"
    assert hole.most_open <= 2  # WEBHOOK_CONCURRENCY: at most 2 deliveries at once
    assert len(hole.accepted) == 2 * len(hung)  # every delivery tried twice
    dead = await redis.xrange(keys.webhook_dead_letters)
    assert sorted(f[b"container_id"].decode() for _, f in dead) == hung
    for _, f in dead:
        assert f[b"reason"] == f"no answer within {timeout:g}s".encode()
        assert f[b"attempts"] == b"2"
    assert await redis.zcard(keys.webhook_queue) == 0
    assert await redis.zcard(keys.queue) == 0


async def test_a_delivery_left_in_the_shared_queue_is_handed_over_and_delivered(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """An upgrade with deliveries queued: a delivery job that an earlier release put in the
    shared queue ``{prefix}:queue`` is moved to the deliveries' queue by the checks' claim
    (without counting a try), and delivered on its first attempt."""
    settings = hook_settings(settings)
    sim.state.set_script("9631", ["FINISHED"])
    async with webhook_receiver([200]) as rec:
        await enqueue(redis, "9631", settings=settings)
        async with running_worker(settings):
            await final_of(redis, settings, "9631", timeout=10)
            # What an earlier release's record.lua wrote for a final state with a webhook.
            current = await get_result(redis, "9631", settings=settings)
            assert current is not None
            job_id = keys.webhook_job_id("9631", current.generation)
            body = body_for(current, job_id)
            data = encode_job(DELIVER_FUNCTION, ("9631", current.generation, body, rec.url), 1_000)
            await redis.set(JOBS.job_data(job_id), data)
            await redis.hset(keys.result("9631"), "webhook_status", "pending")  # type: ignore[misc]
            await redis.zadd(keys.queue, {job_id: int(time.time() * 1000)})

            async def delivered() -> bool:
                r = await get_result(redis, "9631", settings=settings)
                return r is not None and r.webhook_status == "delivered"

            await wait_until(delivered)
    assert len(rec.got) == 1 and rec.got[0][0] == body
    r = await get_result(redis, "9631", settings=settings)
    assert r is not None and r.webhook_attempts == 1  # the handover was not an attempt
    assert await redis.zscore(keys.queue, job_id) is None
    assert await redis.zscore(keys.webhook_queue, job_id) is None


async def test_each_claim_hands_the_other_queues_jobs_over(redis: Redis, keys: Keys) -> None:
    """A claim never returns a job of the other queue: it moves it there, due as it was, with
    no lock taken and no try counted; a job locked by a run stays until its lease ends."""
    checks = JobQueue(redis, keys, job_ttl_seconds=3600)
    deliveries = JobQueue(redis, keys, job_ttl_seconds=3600, deliveries=True)
    hook = keys.webhook_job_id("9641", "g1")
    check = keys.job_id("9642", "g2")
    held = keys.webhook_job_id("9643", "g3")
    for job_id in (hook, check, held):
        await redis.set(JOBS.job_data(job_id), encode_job(DELIVER_FUNCTION, ("x", "y"), 1))
    await redis.set(JOBS.job_lock(held), "someone/1", px=60_000)
    await redis.zadd(keys.queue, {hook: 1000, held: 1001})
    await redis.zadd(keys.webhook_queue, {check: 1002})

    claim = await checks.claim("w", limit=10, lease_ms=10_000)
    assert claim.jobs == []
    assert await redis.zscore(keys.webhook_queue, hook) == 1000
    assert await redis.zscore(keys.queue, hook) is None
    # Held by a run (of an earlier release): left where it is, due when its lease ends.
    assert (await redis.zscore(keys.queue, held) or 0) > 1001
    assert await redis.zscore(keys.webhook_queue, held) is None

    claim = await deliveries.claim("w", limit=10, lease_ms=10_000)
    assert [j.job_id for j in claim.jobs] == [hook]
    assert await redis.zscore(keys.queue, check) == 1002
    assert await redis.zscore(keys.webhook_queue, check) is None
    assert await redis.get(JOBS.job_tries(check)) is None
    assert await redis.get(JOBS.job_tries(hook)) == b"1"  # one try: its own claim


async def test_a_long_backlog_is_handed_over_in_bounded_claims(redis: Redis, keys: Keys) -> None:
    """An upgrade that finds a long backlog of deliveries in the shared queue: a claim hands
    over a bounded part of it (a short script; it declares the lock of each job it looks at, at
    most 500 a call) and says a job is due now, so the runner claims again at once; the check
    behind them is claimed within a few claims."""
    checks = JobQueue(redis, keys, job_ttl_seconds=3600)
    hooks = {keys.webhook_job_id(f"96{i:04d}", "g"): 1000 + i for i in range(1005)}
    check = keys.job_id("9650", "g")
    await redis.zadd(keys.queue, {**hooks, check: 5000})
    claims: list[Claim] = []
    while len(claims) < 10:
        claim = await checks.claim("w", limit=10, lease_ms=10_000)
        claims.append(claim)
        if claim.jobs:
            break
        assert claim.next_due_ms == claim.now_ms  # more is due now: claim again at once
    assert [j.job_id for j in claims[-1].jobs] == [check]
    assert len(claims) <= 3
    assert await redis.zcard(keys.webhook_queue) == 1005
    assert await redis.zcard(keys.queue) == 1  # the check, leased
    assert await redis.zscore(keys.webhook_queue, keys.webhook_job_id("960000", "g")) == 1000
