"""HTTP servers a test stands up on loopback: any aiohttp application (``serving_app``), and the
webhook receiver the worker delivers to (``webhook_receiver``), which records what it got."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from bench.harness import HOST


@contextlib.asynccontextmanager
async def serving_app(app: web.Application, host: str = HOST, port: int = 0) -> AsyncIterator[str]:
    """``app`` listening on ``host`` (a free port unless one is given) for the block: its base
    URL, ``http://host:port``."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class Receiver:
    """What a webhook receiver got, and the statuses it answers with."""

    url: str
    answers: list[int]
    got: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)  # body, headers
    at: list[float] = field(default_factory=list)  # time.monotonic() of each request
    seen: list[tuple[str, str]] = field(default_factory=list)  # method, path of each request

    def answer(self) -> int:
        """The next status: each of ``answers`` in turn, the last one for ever after."""
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@contextlib.asynccontextmanager
async def webhook_receiver(
    answers: Sequence[int] = (200,), host: str = HOST
) -> AsyncIterator[Receiver]:
    """A receiver on ``host`` whose URL is ``/hook?tenant=a`` (a query value, as real receivers
    carry, which the dead-letter views must mask); it records every request, whatever its
    method and path, and answers each with the next of ``answers``."""
    rec = Receiver("", list(answers))

    async def handle(request: web.Request) -> web.Response:
        rec.at.append(time.monotonic())
        rec.got.append((await request.read(), dict(request.headers)))
        rec.seen.append((request.method, request.path))
        return web.Response(status=rec.answer(), text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serving_app(app, host) as base:
        rec.url = f"{base}/hook?tenant=a"
        yield rec
