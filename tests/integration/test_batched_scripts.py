"""Calls of one script made in the same turn of the event loop go to Redis in one pipeline
(worker.store.scripts.Batched, the record script's calls), each still its own run with its own
reply or error, on a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bench.harness import RedisServer
from worker.store.scripts import Batched

# Sets its key to its argument and answers it; fails (a Lua error) when the argument is "boom".
SCRIPT = """
if ARGV[1] == 'boom' then return redis.error_reply('boom asked for') end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


@contextlib.contextmanager
def counted_pipelines(redis: Redis) -> Iterator[list[int]]:
    """Counts the pipelines ``redis`` makes inside the block (one per batch sent)."""
    sent: list[int] = []
    pipeline = redis.pipeline

    def counting_pipeline(transaction: bool = True) -> object:
        sent.append(1)
        return pipeline(transaction=transaction)

    redis.pipeline = counting_pipeline  # type: ignore[method-assign,assignment]
    try:
        yield sent
    finally:
        redis.pipeline = pipeline  # type: ignore[method-assign]


async def test_calls_of_one_turn_share_one_pipeline_and_keep_their_own_replies(
    redis: Redis,
) -> None:
    batched = Batched(redis.register_script(SCRIPT))
    await batched(keys=["warm"], args=["0"])  # loads the script
    with counted_pipelines(redis) as sent:
        replies = await asyncio.gather(
            *(batched(keys=[f"k{i}"], args=[f"v{i}"]) for i in range(20))
        )
    assert replies == [f"v{i}".encode() for i in range(20)]
    assert len(sent) == 1
    for i in range(20):
        assert await redis.get(f"k{i}") == f"v{i}".encode()


async def test_one_calls_error_is_its_own(redis: Redis) -> None:
    batched = Batched(redis.register_script(SCRIPT))
    results = await asyncio.gather(
        batched(keys=["a"], args=["1"]),
        batched(keys=["b"], args=["boom"]),
        batched(keys=["c"], args=["3"]),
        return_exceptions=True,
    )
    assert results[0] == b"1"
    assert isinstance(results[1], ResponseError)
    assert "boom asked for" in str(results[1])
    assert results[2] == b"3"
    # Alone, it fails the same way.
    with pytest.raises(ResponseError, match="boom asked for"):
        await batched(keys=["d"], args=["boom"])


async def test_scripts_lost_by_redis_are_loaded_again(redis: Redis) -> None:
    batched = Batched(redis.register_script(SCRIPT))
    assert await batched(keys=["a"], args=["1"]) == b"1"
    await redis.script_flush()
    replies = await asyncio.gather(*(batched(keys=[f"x{i}"], args=[str(i)]) for i in range(5)))
    assert replies == [str(i).encode() for i in range(5)]
    await redis.script_flush()
    assert await batched(keys=["y"], args=["alone"]) == b"alone"


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis: Redis) -> None:
    batched = Batched(redis.register_script(SCRIPT))
    first = asyncio.ensure_future(batched(keys=["a"], args=["1"]))
    second = asyncio.ensure_future(batched(keys=["b"], args=["2"]))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == b"2"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_connection_error_fails_every_call_of_the_batch(redis: Redis) -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    batched = Batched(dead.register_script(SCRIPT))
    results = await asyncio.gather(
        *(batched(keys=[f"k{i}"], args=["v"]) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await dead.aclose()


async def test_calls_of_two_scripts_in_one_turn_share_the_pipeline(redis: Redis) -> None:
    setter = Batched(redis.register_script(SCRIPT))
    getter = Batched(redis.register_script("return redis.call('GET', KEYS[1])"))
    await redis.set("g", "got")
    await asyncio.gather(setter(keys=["w"], args=["0"]), getter(keys=["g"], args=[]))
    with counted_pipelines(redis) as sent:
        replies = await asyncio.gather(
            setter(keys=["a"], args=["1"]),
            getter(keys=["g"], args=[]),
            setter(keys=["b"], args=["2"]),
        )
    assert list(replies) == [b"1", b"got", b"2"]
    assert len(sent) == 1


def test_a_call_left_by_a_stopped_loop_holds_up_no_later_call(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    batched = Batched(client.register_script(SCRIPT))

    async def leave() -> None:
        # Added to this turn, then the loop stops before the turn's batch is sent.
        batched(keys=["left"], args=["1"])
        asyncio.get_running_loop().stop()

    first = asyncio.new_event_loop()
    try:
        left = first.create_task(leave())
        first.run_forever()
        assert left.done()
    finally:
        first.close()

    async def later() -> Any:
        try:
            return await asyncio.wait_for(batched(keys=["later"], args=["2"]), 5)
        finally:
            await client.aclose()

    assert asyncio.run(later()) == b"2"
