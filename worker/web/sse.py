"""``GET /v1/events``: the events stream (``{prefix}:events``) as Server-Sent Events.

Each final state is one event::

    id: 1795438388610-0
    event: final
    data: {"container_id": "...", "status": "FINISHED", ...}

The id is the stream entry's id, so a client that reconnects with ``Last-Event-ID`` (EventSource
does so by itself) gets every event after it, none twice, as long as the stream still holds them
(``EVENTS_MAX_LEN``); when some were trimmed in between, an ``event: gap`` says so first. Without
``Last-Event-ID`` the stream starts with the next final state; ``Last-Event-ID: 0`` replays all
the stream holds. A comment line every ``KEEPALIVE_SECONDS`` keeps proxies from closing an idle
stream; ``retry:`` tells clients to come back after 2 s. At most ``API_MAX_EVENT_STREAMS`` are
open at once (503 ``too_many_streams`` beyond), and ``API_MAX_WAITS_PER_KEY`` streams and long
polls per key (429); both with Retry-After. On shutdown every stream ends.
"""

from __future__ import annotations

import json
import time

from aiohttp import web
from redis.exceptions import RedisError

from worker.store.admin import FinalEvent
from worker.store.queue import text
from worker.web.context import ctx_of, holder
from worker.web.errors import ApiError
from worker.web.requests import parse_last_event_id
from worker.web.views import event_json

KEEPALIVE_SECONDS = 15.0
BLOCK_MS = 1000
BATCH = 100
RETRY_MS = 2000


def frame(event_id: str, data: dict[str, object], event: str = "final") -> bytes:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {event}\ndata: {body}\n\n".encode()


def _older(a: str, b: str) -> bool:
    """Stream id ``a`` comes before ``b``."""
    ma, sa = (int(x) for x in a.split("-"))
    mb, sb = (int(x) for x in b.split("-"))
    return (ma, sa) < (mb, sb)


async def events(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    after = parse_last_event_id(
        request.headers.get("Last-Event-ID"), request.query.get("last_event_id")
    )
    if ctx.stopping.is_set():
        raise ApiError("shutting_down")
    # Counted before the first await: requests that arrive together cannot all pass the cap.
    who = holder(request)
    ctx.take_wait("stream", who)
    try:
        return await _stream(request, after)
    finally:
        ctx.give_wait("stream", who)


async def _stream(request: web.Request, after: str | None) -> web.StreamResponse:
    ctx = ctx_of(request)
    redis = ctx.stream_redis
    stream = ctx.admin.keys.events
    gap: tuple[str, str] | None = None
    if after is None:
        # Start after the newest entry now ("$" read again later would skip what came between).
        newest = await redis.xrevrange(stream, "+", "-", count=1)
        after = text(newest[0][0]) if newest else "0-0"
    elif after != "0-0":
        oldest = await redis.xrange(stream, "-", "+", count=1)
        if oldest and _older(after, text(oldest[0][0])):
            gap = (after, text(oldest[0][0]))
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await resp.prepare(request)
        await resp.write(f"retry: {RETRY_MS}\n: threads-poller events\n\n".encode())
        if gap is not None:
            await resp.write(
                frame(
                    after,
                    {"after": gap[0], "oldest": gap[1], "reason": "events were trimmed"},
                    "gap",
                )
            )
        quiet_since = time.monotonic()
        while not ctx.stopping.is_set():
            reply = await redis.xread({stream: after}, block=BLOCK_MS, count=BATCH)
            entries = [e for _s, batch in reply or [] for e in batch]
            for entry_id, raw in entries:
                after = text(entry_id)
                await resp.write(frame(after, event_json(FinalEvent.of(after, raw))))
            if entries:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                await resp.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
    except (ConnectionResetError, RedisError, OSError):
        # The client went away, or Redis did: the stream ends, and the client comes back with
        # its Last-Event-ID.
        pass
    return resp
