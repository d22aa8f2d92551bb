"""The Redis-stream intake: what another language's pipeline sees with one XADD."""

from __future__ import annotations

import asyncio
import contextlib
import json

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import final_of, wait_until
from tests.helpers.worker import running_worker
from worker import get_result
from worker.client.producer import store_for
from worker.runtime.intake import IntakeConsumer
from worker.store.keys import INTAKE_GROUP, Keys


async def test_xadd_is_enough_to_get_a_final_state(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("9001", ["IN_PROGRESS", "FINISHED"])
    # Written before any worker exists: must not be missed.
    await redis.xadd(keys.intake, {"container_id": "9001"})
    async with running_worker(settings):
        await redis.xadd(keys.intake, {"container_id": "9002", "account": "77"})

        async def both_known() -> bool:
            a = await get_result(redis, "9001", settings=settings)
            b = await get_result(redis, "9002", settings=settings)
            return a is not None and a.final and b is not None

        await wait_until(both_known, timeout=10)
    b = await get_result(redis, "9002", settings=settings)
    assert b is not None and b.account == "77"
    # Acknowledged and removed once the polls existed.
    assert await redis.xlen(keys.intake) == 0
    pending = await redis.xpending(keys.intake, INTAKE_GROUP)
    assert pending["pending"] == 0


async def test_bad_entries_go_to_dead_letters_with_reason(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("9010", ["FINISHED"])
    bad = [
        ({"containerId": "9011"}, "unknown field"),
        ({"account": "1"}, "missing field container_id"),
        ({"container_id": "abc"}, "digits only"),
        ({"container_id": ""}, "empty"),
        ({"container_id": "9" * 200}, "at most 32"),
        ({"container_id": b"\xff\xfe\x00junk"}, "not UTF-8"),
        ({"container_id": "9012", "force": "maybe"}, "force must be"),
        ({"container_id": "9013", "blob": "x" * 10_000}, "bytes; the limit"),
    ]
    for fields, _ in bad:
        await redis.xadd(keys.intake, fields)  # type: ignore[arg-type]
    await redis.xadd(keys.intake, {"container_id": "9010"})
    async with running_worker(settings):

        async def settled() -> bool:
            r = await get_result(redis, "9010", settings=settings)
            return r is not None and r.final and await redis.xlen(keys.dead_letters) == len(bad)

        await wait_until(settled, timeout=10)
    dead = await redis.xrange(keys.dead_letters)
    reasons = [f[b"reason"].decode() for _, f in dead]
    for (_, why), reason in zip(bad, reasons, strict=True):
        assert why in reason, (why, reason)
    first = json.loads(dead[0][1][b"fields"])
    assert first == {"containerId": "9011"}
    huge = json.loads(dead[-1][1][b"fields"])
    assert len(huge["blob"]) < 1100  # stored truncated, not in full
    assert await redis.xlen(keys.intake) == 0


async def test_entries_of_a_dead_consumer_are_claimed(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    store = store_for(redis, settings)
    dead_worker = IntakeConsumer(
        redis,
        store,
        consumer="dead",
        batch_size=10,
        claim_idle_seconds=0.2,
        max_entry_bytes=4096,
        block_ms=10,
    )
    await dead_worker.ensure_group()
    await redis.xadd(keys.intake, {"container_id": "9020"})
    # The dead consumer read the entry but died before enqueueing or acknowledging it.
    await redis.xreadgroup(INTAKE_GROUP, "dead", {keys.intake: ">"}, count=10)
    assert (await redis.xpending(keys.intake, INTAKE_GROUP))["pending"] == 1
    assert await get_result(redis, "9020", settings=settings) is None

    live = IntakeConsumer(
        redis,
        store,
        consumer="live",
        batch_size=10,
        claim_idle_seconds=0.2,
        max_entry_bytes=4096,
        block_ms=10,
    )
    assert await live.claim_stale() == 0  # not idle long enough yet
    await asyncio.sleep(0.3)
    assert await live.claim_stale() == 1
    r = await get_result(redis, "9020", settings=settings)
    assert r is not None and r.status == "QUEUED"
    assert (await redis.xpending(keys.intake, INTAKE_GROUP))["pending"] == 0


async def test_intake_duplicates_are_deduplicated(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("9030", ["IN_PROGRESS", "FINISHED"])
    for _ in range(5):
        await redis.xadd(keys.intake, {"container_id": "9030"})
    async with running_worker(settings):
        await final_of(redis, settings, "9030", timeout=10)
    assert sim.state.calls_for("9030").count == 2


async def consumer_names(redis: Redis, keys: Keys) -> dict[str, int]:
    """Name -> pending entries, of every consumer of the intake group."""
    return {
        c["name"].decode(): int(c["pending"])
        for c in await redis.xinfo_consumers(keys.intake, INTAKE_GROUP)
    }


def consumer(redis: Redis, settings: Settings, name: str, **kw: float) -> IntakeConsumer:
    return IntakeConsumer(
        redis,
        store_for(redis, settings),
        consumer=name,
        batch_size=10,
        claim_idle_seconds=kw.get("claim_idle_seconds", 0.2),
        max_entry_bytes=4096,
        block_ms=10,
        consumer_max_idle_seconds=kw.get("consumer_max_idle_seconds", 3600.0),
    )


async def test_close_removes_this_consumer_unless_entries_are_pending_for_it(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    done = consumer(redis, settings, "worker-a")
    busy = consumer(redis, settings, "worker-b")
    await done.ensure_group()
    await redis.xadd(keys.intake, {"container_id": "9040"})
    assert await done.read_once() == 1  # read, enqueued and acknowledged: nothing pending
    await redis.xadd(keys.intake, {"container_id": "9041"})
    # worker-b read an entry and stops before acknowledging it.
    await redis.xreadgroup(INTAKE_GROUP, "worker-b", {keys.intake: ">"}, count=10)
    assert await consumer_names(redis, keys) == {"worker-a": 0, "worker-b": 1}

    await busy.close()
    await done.close()
    # worker-b is kept: deleting it would drop its pending entry from the group for good.
    assert await consumer_names(redis, keys) == {"worker-b": 1}
    assert (await redis.xpending(keys.intake, INTAKE_GROUP))["pending"] == 1
    await done.close()  # twice, or with the consumer gone already: no error
    # Closing without a stream or group at all is not an error either.
    await redis.flushall()
    await done.close()


async def test_idle_consumers_without_pending_entries_are_pruned(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    me = consumer(redis, settings, "me", consumer_max_idle_seconds=0.3)
    await me.ensure_group()
    await redis.xgroup_createconsumer(keys.intake, INTAKE_GROUP, "dead-empty")
    await redis.xadd(keys.intake, {"container_id": "9050"})
    await redis.xreadgroup(INTAKE_GROUP, "dead-busy", {keys.intake: ">"}, count=10)
    await asyncio.sleep(0.4)
    await redis.xgroup_createconsumer(keys.intake, INTAKE_GROUP, "alive-empty")
    await redis.xadd(keys.intake, {"container_id": "9051"})
    assert await me.read_once() == 1
    assert set(await consumer_names(redis, keys)) == {
        "me",
        "dead-empty",
        "dead-busy",
        "alive-empty",
    }

    assert await me.prune_consumers() == ["dead-empty"]
    # Idle for long but with an entry pending: kept, and its entry is still claimed.
    assert await consumer_names(redis, keys) == {"dead-busy": 1, "alive-empty": 0, "me": 0}
    assert await me.claim_stale() == 1
    r = await get_result(redis, "9050", settings=settings)
    assert r is not None and r.status == "QUEUED"
    # Now dead-busy has nothing pending: the clean stop removes it, and this consumer.
    await me.close()
    assert await consumer_names(redis, keys) == {"alive-empty": 0}


async def test_run_prunes_idle_consumers_at_start(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    me = consumer(redis, settings, "restarted", consumer_max_idle_seconds=0.2)
    await me.ensure_group()
    await redis.xgroup_createconsumer(keys.intake, INTAKE_GROUP, "before-restart")
    await asyncio.sleep(0.3)
    task = asyncio.create_task(me.run())
    try:

        async def pruned() -> bool:
            return "before-restart" not in await consumer_names(redis, keys)

        await wait_until(pruned, timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await me.close()
    assert await consumer_names(redis, keys) == {}
