"""What the worker is compared with, each run as a subprocess of the bench
(``python -m bench.bench --role noop-worker|floor-worker``):

``noop``   bare arq: one arq Worker running no-op jobs, with the worker's ``max_jobs`` and
           ``poll_delay``.
``floor``  a check with no job system: one aiohttp GET of the simulator's status endpoint and one
           EVALSHA (HSET + EXPIRE + ZADD) per container, with the worker's concurrency.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

from redis.asyncio import Redis

NOOP_QUEUE = "bench-noop:queue"
FLOOR_PREFIX = "bench-floor"
FLOOR_DONE = FLOOR_PREFIX + ":done"  # zset: one member per check done (progress = ZCARD)
TOKEN = "bench-token-not-a-secret"  # noqa: S105 - the simulator accepts any token

# Container id prefixes, one per scripted behaviour of the simulator.
FINISHED_IDS = "9"  # default script: FINISHED on the first check


# ----- bare arq ----------------------------------------------------------------------------------


async def noop(ctx: dict[str, Any]) -> None:
    return None


def run_noop_worker(redis_url: str, max_jobs: int, poll_delay: float) -> int:
    """The baseline: a bare arq Worker, arq's default log configuration (INFO, per-job lines)."""
    import logging.config

    from arq import Worker
    from arq.connections import RedisSettings
    from arq.logs import default_log_config
    from arq.worker import func

    logging.config.dictConfig(default_log_config(verbose=False))
    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=NOOP_QUEUE,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        keep_result=0,
        health_check_key=NOOP_QUEUE + ":health-check",
    )
    worker.run()
    return 0


# ----- the floor ---------------------------------------------------------------------------------


# The floor's one Redis call per check: what a check must write at the least (its result, an
# expiry, an index entry), in one round trip.
# KEYS[1] result hash, KEYS[2] done zset; ARGV[1] status, ARGV[2] now, ARGV[3] TTL s, ARGV[4] id.
FLOOR_LUA = """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'checked_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""


def floor_ids(n: int) -> list[str]:
    return [f"{FINISHED_IDS}{i:015d}" for i in range(n)]


async def floor_checks(
    redis_url: str,
    api_base: str,
    n: int,
    concurrency: int,
    api_concurrency: int,
    per_second: float = 0.0,
    tick: float = 0.0,
) -> int:
    """N checks with no job system: ``concurrency`` lanes take ids from one list; each check is
    one GET (at most ``api_concurrency`` at once, like the worker's api_slots) and one EVALSHA.
    ``per_second`` > 0: check i starts no sooner than i / per_second after the first (the paced
    phase's control: what running at that rate costs a process that has no job system), on
    ``tick``s (the worker's claim gap): the checks due within one start together, as a worker's
    claim starts them."""
    from api_client.client import STATUS_FIELDS, make_session

    redis = Redis.from_url(redis_url)
    write = redis.register_script(FLOOR_LUA)
    await redis.script_load(FLOOR_LUA)  # so that every check is one EVALSHA, none a NOSCRIPT
    api_slots = asyncio.Semaphore(api_concurrency)
    todo = iter(enumerate(floor_ids(n)))
    loop = asyncio.get_running_loop()
    start = loop.time()
    params = {"fields": STATUS_FIELDS, "access_token": TOKEN}
    errors = 0
    # The worker's session: same connector limit (WORKER_MAX_JOBS), keep-alive, no cookie jar.
    async with make_session(timeout_seconds=10.0, max_connections=concurrency) as http:

        async def lane() -> None:
            nonlocal errors
            for i, cid in todo:  # shared: each id is taken by exactly one lane
                if per_second:
                    due = i / per_second
                    if tick:
                        due = math.ceil(due / tick) * tick
                    await asyncio.sleep(max(0.0, start + due - loop.time()))
                try:
                    async with api_slots, http.get(f"{api_base}/{cid}", params=params) as resp:
                        body = await resp.read()
                    status = json.loads(body)["status"]
                    await write(
                        keys=[f"{FLOOR_PREFIX}:result:{cid}", FLOOR_DONE],
                        args=[status, time.time(), 86_400, cid],
                    )
                except Exception as exc:  # counted and reported; the count shows it as not done
                    errors += 1
                    if errors <= 5:
                        print(f"floor check {cid} failed: {exc!r}", file=sys.stderr, flush=True)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    await redis.aclose()
    print(f"floor: {n} checks, {errors} failed", flush=True)
    return 1 if errors else 0


def run_floor_worker(
    redis_url: str,
    api_base: str,
    n: int,
    concurrency: int,
    api_concurrency: int,
    loop: str,
    per_second: float = 0.0,
    tick: float = 0.0,
) -> int:
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(
        floor_checks(redis_url, api_base, n, concurrency, api_concurrency, per_second, tick)
    )
