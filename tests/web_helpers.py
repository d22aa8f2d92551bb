"""The HTTP API in a test: ``serve``'s real application on a free port of this event loop, a
client that presents a key, checks every JSON answer against ``/v1/openapi.json``, and reads
Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from jsonschema import Draft202012Validator
from multidict import CIMultiDict
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bench.harness import HOST, free_port
from config import Settings
from worker.web import openapi
from worker.web.app import AccessLogger, build_app
from worker.web.auth import KeySource
from worker.web.context import CTX, WebContext

RW_KEY = "rw-test-key-0123456789abcdef"
RO_KEY = "ro-test-key-0123456789abcdef"

DOC = openapi.document()
_URN = "urn:threads-poller:openapi"
_REGISTRY: Registry[Any] = Registry().with_resource(
    _URN, Resource.from_contents(DOC, default_specification=DRAFT202012)
)
_TEMPLATES: list[tuple[re.Pattern[str], str]] = [
    (re.compile("^" + re.sub(r"{\w+}", "[^/]+", p) + "$"), str(p)) for p in sorted(DOC["paths"])
]


def template_of(path: str) -> str | None:
    for pattern, template in _TEMPLATES:
        if pattern.match(path):
            return template
    return None


def validate(method: str, path: str, status: int, body: Any) -> None:
    """``body`` is what the document promises for this route, method and status."""
    template = template_of(path)
    if template is None:
        return  # not an API route (the 404 of an unknown path: its shape is checked by callers)
    op = DOC["paths"][template].get(method.lower())
    if op is None:
        # 405: the route exists, not this method; any error is an Error.
        schema: Any = {"$ref": "#/components/schemas/Error"}
    else:
        resp = op["responses"].get(str(status))
        assert resp is not None, f"{method} {template} answered {status}: not documented"
        if "$ref" in resp:
            resp = DOC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        content = resp.get("content", {}).get("application/json")
        if content is None:
            return
        schema = content["schema"]
    ref = {"$ref": _URN + schema["$ref"]} if "$ref" in schema else schema
    Draft202012Validator(ref, registry=_REGISTRY).validate(body)


@dataclass
class Answer:
    status: int
    body: Any
    headers: CIMultiDict[str]  # case-insensitive
    text: str

    def code(self) -> str:
        assert isinstance(self.body, dict) and "error" in self.body, self.text[:300]
        return str(self.body["error"]["code"])


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    ctx: WebContext
    key: str | None = RW_KEY
    seen: list[Answer] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | bool | None = True,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        check: bool = True,
    ) -> Answer:
        """``key``: True for this client's key, None/False for none, a string for that one."""
        sent = dict(headers or {})
        use = self.key if key is True else (key or None)
        if use:
            sent["Authorization"] = f"Bearer {use}"
        async with self.http.request(
            method, self.base + path, json=json, data=data, headers=sent, allow_redirects=False
        ) as resp:
            text = await resp.text()
            body: Any = None
            if resp.content_type == "application/json":
                body = await resp.json(content_type=None)
            answer = Answer(resp.status, body, resp.headers.copy(), text)
        self.seen.append(answer)
        if check and body is not None:
            validate(method, path.split("?", 1)[0], answer.status, body)
        return answer

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Answer:
        return await self.call("POST", path, **kw)


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings,
    *,
    write: Sequence[str] = (RW_KEY,),
    read: Sequence[str] = (RO_KEY,),
    sample: bool = True,
) -> AsyncIterator[Api]:
    keys = KeySource(
        write=",".join(write) or None,
        read=",".join(read) or None,
        # "NAME=KEY" items bind a key to a named producer of the settings.
        producers=settings.producer_scopes().scopes,
    )
    app = build_app(settings, keys=keys, sample=sample)
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=2.0)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(f"http://{HOST}:{port}", http, app[CTX])
    finally:
        await runner.cleanup()


@dataclass
class Event:
    id: str
    event: str
    data: str


class EventReader:
    """An open ``GET /v1/events``: ``next()`` is the next event (comments skipped)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.retry: int | None = None

    async def next(self, timeout: float = 10.0) -> Event:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if "data" in fields or "event" in fields:
                        return Event(
                            fields.get("id", ""),
                            fields.get("event", "message"),
                            fields.get("data", ""),
                        )
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value


@contextlib.asynccontextmanager
async def events(
    api: Api, *, last_event_id: str | None = None, key: str | None = RW_KEY
) -> AsyncIterator[EventReader]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with api.http.get(
        api.base + "/v1/events", headers=headers, timeout=aiohttp.ClientTimeout(total=60)
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        yield EventReader(resp)
