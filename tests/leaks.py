"""Greps for secrets over every door a secret could leave by: logs, everything stored in Redis,
HTTP responses (metrics today; the HTTP API and its console pages when they exist), command
output, webhook requests. One helper for all of them, so a new door is one more entry:

    doors = {"worker log": log_path.read_bytes(), "redis": await dump_redis(redis)}
    doors |= await http_doors({"metrics": f"http://127.0.0.1:{port}/metrics"})
    assert_no_leaks(doors, [TOKEN, REDIS_PASSWORD])

A secret counts as leaked when it appears whole, URL-encoded, or as any 12-character piece of
it (a truncated log line, a message cut at 40 characters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

import aiohttp
from redis.asyncio import Redis

PIECE = 12


def fragments(secret: str, size: int = PIECE) -> set[str]:
    """The secret, its URL-encoded forms, and every ``size``-character piece of it."""
    found = {secret, quote(secret, safe=""), quote_plus(secret)}
    if len(secret) > size:
        found |= {secret[i : i + size] for i in range(len(secret) - size + 1)}
    return {f for f in found if f}


def find_leaks(doors: Mapping[str, bytes | str], secrets: Iterable[str]) -> list[str]:
    """``"door: piece"`` for every piece of a secret found behind a door (empty: none)."""
    pieces = sorted({p for s in secrets if s for p in fragments(s)}, key=len, reverse=True)
    leaks = []
    for door, content in doors.items():
        text = content if isinstance(content, bytes) else content.encode()
        for piece in pieces:
            if piece.encode() in text:
                leaks.append(f"{door}: {piece[:4]}...")
                break
    return leaks


def assert_no_leaks(doors: Mapping[str, bytes | str], secrets: Iterable[str]) -> None:
    secrets = list(secrets)
    assert secrets, "no secrets to look for"
    assert doors, "no doors to look behind"
    leaks = find_leaks(doors, secrets)
    assert not leaks, f"secrets leaked: {leaks}"


async def dump_redis(redis: Redis) -> bytes:
    """Every byte stored in Redis (every database's keys and values, whatever their type)."""
    chunks: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        chunks.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            chunks.append(await redis.get(key) or b"")
        elif kind == "hash":
            for k, v in (await redis.hgetall(key)).items():  # type: ignore[misc]
                chunks += [k, v]
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                for k, v in fields.items():
                    chunks += [k, v]
        elif kind == "zset":
            chunks += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            chunks += await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            chunks += list(await redis.smembers(key))  # type: ignore[misc]
    return b"\n".join(chunks)


async def http_doors(urls: Mapping[str, str]) -> dict[str, bytes]:
    """GET each URL: its status line, headers and body, as one text per door."""
    out: dict[str, bytes] = {}
    async with aiohttp.ClientSession() as session:
        for name, url in urls.items():
            async with session.get(url) as resp:
                head = f"HTTP {resp.status}\n" + "".join(
                    f"{k}: {v}\n" for k, v in resp.headers.items()
                )
                out[name] = head.encode() + await resp.read()
    return out
