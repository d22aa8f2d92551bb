"""The pacing calendar (``reserve_slot`` in worker/store/lua/lib.lua, issue 22): one sorted set
of runs of taken slots per account. Every reservation finds the first free slot in a few
O(log n) lookups: no slot is booked twice, whatever enqueues and records interleave, and a burst
behind a check booked ahead costs Redis the same per enqueue however long it is. And the
worker's side of paced checks, which fall due one by one: one claim per check at most, fewer
with the runner's claim gap.

Against a real redis-server; the work is counted (``INFO commandstats``, claims made), never
timed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta
from importlib import resources
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from config import Settings
from tests.helpers.waiting import wait_until
from worker.client.client import PollerClient
from worker.client.producer import store_for
from worker.core.decisions import Decision
from worker.core.result import PollResult
from worker.runtime.runner import JobSpec, Runner
from worker.store.jobdata import job_deserializer, job_serializer
from worker.store.keys import Keys
from worker.store.queue import Claim, ClaimedJob, JobQueue
from worker.store.results import ResultStore, pacing_step_ms

ACCOUNT = "4242"

# reserve_slot itself, called with an explicit `now`: the library as every script gets it.
RESERVE = (
    "#!lua\n"
    + resources.files("worker.store").joinpath("lua", "lib.lua").read_text(encoding="utf-8")
    + "\nreturn reserve_slot(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))"
)


async def reserve(redis: Redis, key: str, step: int, want: int, now: int) -> int:
    reply = await redis.eval(RESERVE, 1, key, str(step), str(want), str(now))  # type: ignore[misc]
    return int(reply)


async def runs_of(redis: Redis, key: str) -> list[tuple[int, int]]:
    """The calendar's runs [start, end) of taken slots, in order."""
    raw = await redis.zrange(key, 0, -1, withscores=True)
    return sorted((int(start), int(end)) for start, end in raw)


def as_runs(slots: set[int]) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of a set of slot numbers."""
    runs: list[tuple[int, int]] = []
    for s in sorted(slots):
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


# ----- the calendar against a model: a set of taken slots ----------------------------------


@pytest.mark.parametrize("seed", range(4))
async def test_reservations_match_the_first_free_slot_model(redis: Redis, seed: int) -> None:
    """Wants at random (now, a little ahead, far ahead, into runs, next to them): each answer is
    the model's first free slot at or after the want (the want itself when its slot is free),
    and the sorted set holds exactly the model's taken slots as maximal runs."""
    rng = random.Random(seed)
    key, step, now = "t:rate:1:runs", 200, 1_800_000_000_000
    taken: set[int] = set()
    for n in range(400):
        now += rng.choice((0, 0, 0, 7, 150, 900))
        want = now + rng.choice((0, 0, 0, rng.randrange(0, 3000), rng.randrange(0, 60_000)))
        i = want // step
        while i in taken:
            i += 1
        taken.add(i)
        expected = max(i * step, want)
        assert await reserve(redis, key, step, want, now) == expected, n
    # Exactly the model's runs, less some that ended over a minute ago (dropped a few at a time).
    runs, model = await runs_of(redis, key), as_runs(taken)
    assert set(runs) <= set(model)
    assert [r for r in model if r[1] * step > now - 60_000] == [
        r for r in runs if r[1] * step > now - 60_000
    ]
    # The key lives at least a minute past its latest slot.
    assert await redis.pttl(key) > max(taken) * step - now + 59_000


async def test_the_free_slots_before_a_check_booked_ahead_stay_free(redis: Redis) -> None:
    """README: slot i covers [i*step, (i+1)*step); a free slot at `want` is taken at `want`
    itself, and checks booked for later still find the free slots before them."""
    key, step, now = "t:rate:2:runs", 100, 1_800_000_000_050
    assert await reserve(redis, key, step, now + 430, now) == now + 430  # ahead: slot +4
    got = [await reserve(redis, key, step, now, now) for _ in range(6)]
    # At `now` itself, then the starts of the next slots, over the one booked ahead.
    base = now // step * step
    assert got == [now, base + 100, base + 200, base + 300, base + 500, base + 600]
    # One run now: the check ahead merged with the burst around it.
    assert await runs_of(redis, key) == [(now // step, now // step + 7)]
    # A check wanted inside the run goes to its end.
    assert await reserve(redis, key, step, now + 250, now) == base + 700


async def test_runs_that_ended_a_minute_ago_are_dropped(redis: Redis) -> None:
    """The calendar forgets slots a minute after their time, a few runs per reservation."""
    key, step, now = "t:rate:3:runs", 100, 1_800_000_000_000
    for k in range(5):  # five separate runs
        await reserve(redis, key, step, now + 1000 * k, now)
    assert len(await runs_of(redis, key)) == 5
    later = now + 1000 * 2 + 60_100  # the first three ended over a minute ago
    await reserve(redis, key, step, later, later)
    await reserve(redis, key, step, later, later)
    runs = await runs_of(redis, key)
    assert runs[0] == ((now + 3000) // step, (now + 3000) // step + 1)
    assert len(runs) == 3  # the two runs left, and the two new slots (one run)


# ----- through the scripts: concurrent enqueues and records ---------------------------------


async def _record_due(
    queue: JobQueue, store: ResultStore, rng: random.Random, booked: list[int], rounds: int
) -> None:
    """A worker's part: claim what is due, record each as IN_PROGRESS with its next check
    booked a random time ahead (inside, next to, or past the bursts' runs)."""
    for _ in range(rounds):
        claim = await queue.claim("test-worker", limit=5, lease_ms=30_000)
        for job in claim.jobs:
            booked.append(await _record(store, job, rng.uniform(0, 3)))
        await asyncio.sleep(0.01)


async def _record(store: ResultStore, job: ClaimedJob, ahead: float) -> int:
    assert job.state is not None
    current = PollResult.from_hash(job.state)
    now = job.now()
    decision = Decision(
        "IN_PROGRESS",
        False,
        now + ahead,
        last_api_status="IN_PROGRESS",
        checks=current.checks + 1,
    )
    done = await store.record(job, current, decision, checked_at=now)
    assert done.outcome == "ok" and done.next_run_at is not None
    return round(done.next_run_at * 1000)


async def test_concurrent_enqueues_and_records_never_book_a_slot_twice(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    """Three producers' bursts and a worker's records of one account, interleaved: every check
    ever booked has a slot of its own, bookings that waited sit at their slot's start, at most
    rate + 1 fall in any second, and the calendar holds exactly the slots booked."""
    settings = settings.model_copy(update={"account_max_requests_per_second": 50.0})
    step = pacing_step_ms(50.0)
    store = store_for(redis, settings)
    await store.publish_config(webhook_signing=False)
    # Live polls whose checks are due now (their first slots passed a while ago).
    live = [f"5{i:04d}" for i in range(20)]
    await PollerClient.from_settings(settings, redis).enqueue_many(live, account=ACCOUNT)
    await redis.zadd(keys.queue, {keys.job_id(c, await _gen(redis, keys, c)): 0 for c in live})
    booked = [
        round((r.next_check_at or 0) * 1000) for r in await store.load_many(live) if r is not None
    ]

    async def producer(k: int) -> list[tuple[str, int]]:
        # A client of its own (own connections), as separate producer processes would be.
        client = Redis.from_url(str(settings.redis_url))
        try:
            poller = PollerClient.from_settings(settings, client)
            own = store_for(client, settings)
            firsts: list[tuple[str, int]] = []
            for b in range(6):
                batch = [f"6{k}{b}{i:03d}" for i in range(25)]
                await poller.enqueue_many(batch, account=ACCOUNT)
                # Each first check's slot as its enqueue booked it, read at once: a worker
                # that later records the poll books another slot (in worker_booked), and a
                # read at the end would see that one twice and not the first at all.
                for r in await own.load_many(batch):
                    assert r is not None and r.checks == 0
                    firsts.append((r.container_id, round((r.next_check_at or 0) * 1000)))
                await asyncio.sleep(0.005)
            return firsts
        finally:
            await client.aclose()

    queue = JobQueue(redis, keys, job_ttl_seconds=settings.result_ttl_seconds)
    worker_booked: list[int] = []
    worker = asyncio.create_task(
        _record_due(queue, store, random.Random(3), worker_booked, rounds=20)
    )
    bursts = await asyncio.gather(*(producer(k) for k in range(3)))
    await worker
    firsts = [first for burst in bursts for first in burst]
    ids = [cid for cid, _ in firsts]
    burst_polls = await store.load_many(ids)
    booked += [at for _, at in firsts]
    booked += worker_booked
    assert len(booked) == len(live) + 450 + len(worker_booked) and len(worker_booked) >= 20

    slots = [t // step for t in booked]
    assert len(set(slots)) == len(slots), "a slot was booked twice"
    # The calendar holds exactly what was booked (nothing is a minute old yet).
    assert await runs_of(redis, keys.rate(ACCOUNT)) == as_runs(set(slots))
    # Spaced by the step: a burst's checks at consecutive slot starts; no second holds more
    # than the rate's requests plus one at its edge.
    waited = [
        round((r.next_check_at or 0) * 1000)
        for r in burst_polls
        # Not recorded since (a record books a slot of its own, at `want` when it is free).
        if r is not None and r.checks == 0 and r.window_delay > 0
    ]
    assert waited and all(t % step == 0 for t in waited)
    times = sorted(booked)
    assert all(b - a > 0 for a, b in itertools.pairwise(times))
    assert max(sum(1 for t in times[i:] if t < times[i] + 1000) for i in range(len(times))) <= 51


async def _gen(redis: Redis, keys: Keys, cid: str) -> str:
    gen = await redis.hget(keys.result(cid), "generation")  # type: ignore[misc]
    assert gen is not None
    return str(gen.decode())


# ----- the work of a burst is linear ---------------------------------------------------------


async def _commands(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if isinstance(v, dict)
    }


async def _burst_commands(redis: Redis, client: PollerClient, ids: list[str]) -> float:
    """Commands Redis ran (inside Lua included) per enqueue of a burst of ``ids``."""
    before = await _commands(redis)
    for i in range(0, len(ids), 100):
        await client.enqueue_many(ids[i : i + 100], account=ACCOUNT)
    after = await _commands(redis)
    ran = sum(v - before.get(k, 0) for k, v in after.items() if k not in ("info", "evalsha"))
    return ran / len(ids)


async def test_a_burst_behind_a_check_booked_ahead_costs_the_same_per_enqueue(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    """The case that was O(n^2): a live poll's next check booked ahead (its record was the
    calendar's latest booking), then a burst for the account from now on. Each enqueue costs a
    fixed number of Redis commands, in a burst of 200 as in one of 800 after it (the slot by
    slot walk made 1,500 EXISTS per enqueue in a burst of 3,000)."""
    settings = settings.model_copy(update={"account_max_requests_per_second": 100.0})
    store = store_for(redis, settings)
    await store.publish_config(webhook_signing=False)
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue_many(["5000"], account=ACCOUNT)
    await asyncio.sleep(0.05)  # its slot passes: the calendar's run is in the past
    queue = JobQueue(redis, keys, job_ttl_seconds=settings.result_ttl_seconds)
    claim = await queue.claim("test-worker", limit=1, lease_ms=30_000)
    (job,) = claim.jobs
    await _record(store, job, ahead=30.0)  # booked 30 s (3,000 slots) ahead

    small = await _burst_commands(redis, client, [f"51{i:04d}" for i in range(200)])
    large = await _burst_commands(redis, client, [f"52{i:04d}" for i in range(800)])
    assert small < 30 and large < 30, (small, large)
    assert large <= small * 1.05, (small, large)
    stats = await _commands(redis)
    assert stats.get("exists", 0) < 2 * 1001  # enqueue.lua's own EXISTS only, never a walk


# ----- the worker's side: checks that fall due one by one ------------------------------------


class CountingQueue(JobQueue):
    """The real queue, counting the claims the runner makes."""

    claims = 0

    async def claim(self, worker: str, *, limit: int, lease_ms: int) -> Claim:
        self.claims += 1
        return await super().claim(worker, limit=limit, lease_ms=lease_ms)


async def _run_ticks(redis: Redis, keys: Keys, *, n: int, apart_ms: int, gap_s: float) -> int:
    """n jobs due ``apart_ms`` apart, run by a runner with ``claim_gap_s=gap_s`` (and a poll
    period longer than the whole run); returns the claims it made until all had run."""
    queue = CountingQueue(redis, keys, job_ttl_seconds=3600)
    ran: list[str] = []

    async def tick(job: ClaimedJob) -> None:
        ran.append(job.job_id)
        await queue.settle(job, retry_in_ms=None)

    pool = ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
    )
    for k in range(n):
        defer = timedelta(milliseconds=apart_ms * (k + 1))
        job: Any = await pool.enqueue_job(
            "tick", _job_id=f"tick-{k}", _queue_name=keys.queue, _defer_by=defer
        )
        assert job is not None
    runner = Runner(
        queue,
        [JobSpec("tick", tick, timeout_s=5.0, retry_delay_s=1.0)],
        concurrency=8,
        poll_delay_s=5.0,
        claim_gap_s=gap_s,
    )
    task = asyncio.create_task(runner.run())
    try:
        await wait_until(lambda: len(ran) == n, timeout=10 + n * apart_ms / 1000)
    finally:
        await runner.drain(1.0)
        await task
    assert sorted(ran) == sorted(f"tick-{k}" for k in range(n))
    return queue.claims


async def test_jobs_falling_due_one_by_one_cost_one_claim_each(redis: Redis, keys: Keys) -> None:
    """A run's end wakes the runner only when every slot was taken: one that slept because
    nothing more was due stays asleep until the next due time, which the claim told it (a
    wake at every run's end cost an empty claim: two claims per paced check)."""
    claims = await _run_ticks(redis, keys, n=12, apart_ms=100, gap_s=0.0)
    assert claims <= 12 + 2, claims  # one per job (a late runner takes two at once: fewer)


async def test_with_a_claim_gap_jobs_falling_due_one_by_one_run_a_few_per_claim(
    redis: Redis, keys: Keys
) -> None:
    """The claim gap (half a poll period in the worker): after a claim that left nothing due,
    the runner sleeps at least the gap, so jobs a slot apart run a few per claim."""
    claims = await _run_ticks(redis, keys, n=12, apart_ms=100, gap_s=0.35)
    assert claims <= 6, claims  # 1.2 s of jobs, a claim every 0.35 s at most (+ the first)
