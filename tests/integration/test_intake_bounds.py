"""The intake judges an entry inside Redis before reading it: one entry of a million fields
neither kills the worker nor holds up the entries behind it; an entry the workers keep failing
on is dead-lettered without its fields; secrets named as such never reach a dead letter."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from bench.harness import HOST, RedisServer
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from worker import get_result
from worker.client.producer import store_for
from worker.runtime.intake import MAX_DELIVERIES, IntakeConsumer
from worker.store.keys import INTAKE_GROUP, Keys

MIB = 1 << 20


async def raw_xadd(port: int, key: str, fields: int) -> bytes:
    """XADD one entry of ``fields`` one-byte values, written as raw RESP: building the command
    in redis-py would cost this test the memory the worker must not spend."""
    reader, writer = await asyncio.open_connection(HOST, port)
    name = key.encode()
    head = b"*%d\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n"
    writer.write(head % (3 + 2 * fields, len(name), name))
    chunk: list[bytes] = []
    for i in range(fields):
        field = b"%d" % i
        chunk.append(b"$%d\r\n%s\r\n$1\r\nx\r\n" % (len(field), field))
        if len(chunk) == 10_000:
            writer.write(b"".join(chunk))
            chunk = []
            await writer.drain()
    writer.write(b"".join(chunk))
    await writer.drain()
    answer = await reader.readline()
    entry_id = await reader.readline()
    writer.close()
    assert answer.startswith(b"$"), answer
    return entry_id.strip()


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def test_a_million_field_entry_is_dead_lettered_and_blocks_nobody(
    redis: Redis,
    redis_server: RedisServer,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ids = [str(9_100 + i) for i in range(20)]
    for cid in ids:
        sim.state.set_script(cid, ["IN_PROGRESS"])
    env = worker_env(project_env, settings, POLL_MAX_SECONDS="30", INTAKE_CLAIM_IDLE_SECONDS="1")
    worker = await start_worker(env, tmp_path / "worker.log")
    try:
        await redis.xadd(keys.intake, {"container_id": "9099"})

        async def started() -> bool:
            return await get_result(redis, "9099", settings=settings) is not None

        await wait_until(started, timeout=20)
        baseline = memory_kib(worker.pid, "VmRSS")
        big = await raw_xadd(redis_server.port, keys.intake, 1_000_000)
        for cid in ids:
            await redis.xadd(keys.intake, {"container_id": cid})
        t0 = time.monotonic()

        async def all_polls() -> bool:
            found = [await get_result(redis, cid, settings=settings) for cid in ids]
            return all(r is not None for r in found)

        await wait_until(all_polls, timeout=15)
        took = time.monotonic() - t0
        await wait_until(lambda: redis.xlen(keys.dead_letters), timeout=5)
        peak = memory_kib(worker.pid, "VmHWM")
        assert worker.returncode is None, "the worker died"
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 20)
    assert took < 5, f"the entries behind the big one took {took:.1f}s"
    # redis-py reading that entry whole costs well over 100 MiB; the worker never did.
    assert (peak - baseline) * 1024 < 40 * MIB, (baseline, peak)
    dead = await redis.xrange(keys.dead_letters)
    assert len(dead) == 1
    letter = dead[0][1]
    assert letter[b"entry_id"] == big
    reason = letter[b"reason"].decode()
    assert "bytes; the limit is 4096 (1000000 fields, at most 32)" in reason, reason
    # A bounded preview of the entry, never the entry.
    assert len(json.loads(letter[b"fields"])) <= 20
    assert await redis.xlen(keys.intake) == 0
    assert (await redis.xpending(keys.intake, INTAKE_GROUP))["pending"] == 0


def consumer(redis: Redis, settings: Settings, name: str) -> IntakeConsumer:
    return IntakeConsumer(
        redis,
        store_for(redis, settings),
        consumer=name,
        batch_size=10,
        claim_idle_seconds=0.1,
        max_entry_bytes=4096,
        block_ms=10,
    )


async def test_an_entry_the_workers_keep_failing_on_is_dead_lettered_without_its_fields(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    live = consumer(redis, settings, "live")
    await live.ensure_group()
    poison = await redis.xadd(keys.intake, {"container_id": "9201", "account": "4242"})
    after = await redis.xadd(keys.intake, {"container_id": "9202"})
    # Workers took the first entry again and again and died each time (as one reading an entry
    # too big for its memory would), and one took the second and died once.
    await redis.xreadgroup(INTAKE_GROUP, "crashed", {keys.intake: ">"}, count=10)
    await redis.xclaim(keys.intake, INTAKE_GROUP, "crashed", 0, [poison], retrycount=MAX_DELIVERIES)
    await asyncio.sleep(0.2)
    assert await live.claim_stale() == 2
    dead = await redis.xrange(keys.dead_letters)
    assert [d[1][b"entry_id"] for d in dead] == [poison]
    reason = dead[0][1][b"reason"].decode()
    assert f"delivered {MAX_DELIVERIES + 1} times" in reason, reason
    assert json.loads(dead[0][1][b"fields"]) == {}
    assert b"4242" not in json.dumps([str(v) for v in dead[0][1].values()]).encode()
    # The entry behind it became its poll.
    assert await get_result(redis, "9202", settings=settings) is not None
    assert await get_result(redis, "9201", settings=settings) is None
    assert await redis.xlen(keys.intake) == 0
    assert after


async def test_values_of_secret_named_fields_are_never_kept(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    live = consumer(redis, settings, "live")
    await live.ensure_group()
    pasted = {
        "access_token": "THAAunknownTokenNobodyConfigured0123",
        "password": "hunter2",
        "Authorization": "Basic dXNlcjpodW50ZXIy",
        "api_key": "k-live-42",
        "client_secret": "s3cr3t",
    }
    await redis.xadd(keys.intake, cast(Any, {"container_id": "9301", **pasted}))
    # The same in an entry too big to be read whole (its preview is what is kept).
    await redis.xadd(
        keys.intake, {"container_id": "9302", "refresh_token": "r-77", "blob": "x" * 5000}
    )
    assert await live.read_once() == 2
    dead = await redis.xrange(keys.dead_letters)
    assert len(dead) == 2
    first = json.loads(dead[0][1][b"fields"])
    assert first["container_id"] == "9301"
    assert {k: first[k] for k in pasted} == dict.fromkeys(pasted, "[redacted]")
    second = json.loads(dead[1][1][b"fields"])
    assert second["refresh_token"] == "[redacted]"
    everything = json.dumps([[str(v) for v in d[1].values()] for d in dead])
    for value in [*pasted.values(), "r-77"]:
        assert value not in everything, value
