"""The Graph API and a webhook receiver as models: what the lifecycle's model checks against.

``GraphModel`` stands where ``api_client.ThreadsClient`` stands (the three calls a check run
makes). A status or publish call *parks*: it waits until the state machine answers it with one
of the answers below, so that every interleaving of runs, answers, stalls and faults can be
reached. It knows the truth a real pipeline never sees (whether a publish really posted), and
records the promises a publish call breaks at the moment it is made:

- a second publish call for a container after one that could have posted (an answer with a media
  id, an ambiguous answer, or a call whose run vanished before its answer);
- a publish call for a container that is a live carousel's child (a child is never published on
  its own);
- a carousel parent's publish before every one of its children was FINISHED.

The quota call answers at once (a full quota): it decides nothing the model checks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from api_client.errors import GraphAPIError, NetworkError, RequestTimeoutError, ThreadsError
from api_client.models import ContainerStatus, PublishingLimit
from bench.harness import free_port

StatusAnswer = Literal["status", "transient", "throttled", "not_found"]
PublishAnswer = Literal[
    "posted", "ambiguous_posted", "ambiguous_not_posted", "not_ready", "throttled", "failed"
]
# Answers that prove nothing was posted: a later attempt may go ahead.
CERTAIN_NOT_POSTED = frozenset({"not_ready", "throttled", "failed"})


@dataclass
class Call:
    kind: Literal["status", "publish"]
    container_id: str
    future: asyncio.Future[object]
    run: int  # the state machine's number of the run that made it
    n: int = 0
    generation: str = ""  # the poll that made a publish call
    # When the request went out (this host's clock, which Redis shares in the model).
    sent_at: float = field(default_factory=time.time)


# Reads a container's hash fields (the live Redis, through the model's client).
HashReader = Callable[[str], Awaitable[dict[str, str]]]


@dataclass
class GraphModel:
    read_hash: HashReader
    statuses: dict[str, str] = field(default_factory=dict)
    # The truth: containers really posted, with their media id.
    posted: dict[str, str] = field(default_factory=dict)
    # Containers whose publish could have posted, as far as the service can know; and the
    # polls (container, generation) that made such a call.
    maybe_posted: set[str] = field(default_factory=set)
    maybe_posted_polls: set[tuple[str, str]] = field(default_factory=set)
    # Answers with a media id delivered to a run that still owned its poll: cid -> media id.
    answered_media: dict[str, str] = field(default_factory=dict)
    # Answers that proved a publish failed (a certain "no"), per container.
    certain_failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    publish_calls: int = 0
    answered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    violations: list[str] = field(default_factory=list)
    pending: list[Call] = field(default_factory=list)
    current_run: int = -1
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def status_of(self, cid: str) -> str:
        """A container is IN_PROGRESS at its first status answer and FINISHED after, unless the
        machine decided otherwise (``statuses``); PUBLISHED once really posted."""
        if cid in self.posted:
            return "PUBLISHED"
        if cid in self.statuses:
            return self.statuses[cid]
        return "FINISHED" if self.answered[cid] > 0 else "IN_PROGRESS"

    async def _park(
        self, kind: Literal["status", "publish"], cid: str, generation: str = ""
    ) -> object:
        call = Call(
            kind,
            cid,
            asyncio.get_running_loop().create_future(),
            self.current_run,
            next(self._ids),
            generation,
        )
        self.pending.append(call)
        self.parked.set()
        try:
            return await call.future
        finally:
            if call in self.pending:
                # Cancelled (the run's timeout) after the request went out.
                self.pending.remove(call)
                if kind == "publish":
                    self.could_have_posted(call)

    async def get_container_status(self, container_id: str, *, token: str) -> ContainerStatus:
        answer = await self._park("status", container_id)
        if isinstance(answer, ThreadsError):
            raise answer
        assert isinstance(answer, ContainerStatus)
        return answer

    async def get_publishing_limit(self, user_id: str, *, token: str) -> PublishingLimit:
        return PublishingLimit.model_validate(
            {
                "quota_usage": 0,
                "config": {"quota_total": 250, "quota_duration": 86400},
                "reply_quota_usage": 0,
                "reply_config": {"quota_total": 1000, "quota_duration": 86400},
            }
        )

    async def publish(self, user_id: str, creation_id: str, *, token: str) -> str:
        cid = creation_id
        self.publish_calls += 1
        if cid in self.maybe_posted:
            self.violations.append(f"{cid}: a second publish call after one that could have posted")
        if any(c.kind == "publish" and c.container_id == cid for c in self.pending):
            self.violations.append(f"{cid}: a second publish call while the first is in flight")
        h = await self.read_hash(cid)
        parent = h.get("carousel_parent")
        if parent:
            p = await self.read_hash(parent)
            if p.get("generation") == h.get("parent_generation") and p.get("final") == "0":
                self.violations.append(f"{cid}: published on its own as carousel {parent}'s child")
        for child in filter(None, h.get("children", "").split(",")):
            if self.status_of(child) != "FINISHED":
                self.violations.append(
                    f"carousel {cid} published while child {child} is {self.status_of(child)}"
                )
        answer = await self._park("publish", cid, h.get("generation", ""))
        if isinstance(answer, ThreadsError):
            raise answer
        assert isinstance(answer, str)
        return answer

    # ----- the state machine's side ---------------------------------------------------------

    def take(self, index: int, kind: str | None = None) -> Call | None:
        calls = [c for c in self.pending if kind is None or c.kind == kind]
        if not calls:
            return None
        call = calls[index % len(calls)]
        self.pending.remove(call)
        return call

    def answer_status(self, call: Call, how: StatusAnswer) -> None:
        cid = call.container_id
        answer: object
        if how == "status":
            status = self.status_of(cid)
            self.answered[cid] += 1
            message = "FAILED_DOWNLOADING_VIDEO" if status == "ERROR" else None
            answer = ContainerStatus(cid, status, message)
        elif how == "transient":
            answer = NetworkError("connection reset by peer")
        elif how == "throttled":
            answer = GraphAPIError("Application request limit reached", code=4, http_status=400)
        else:
            answer = GraphAPIError("Unsupported get request", code=100, subcode=33, http_status=400)
        call.future.set_result(answer)

    def answer_publish(self, call: Call, how: PublishAnswer, *, owner: bool) -> None:
        """``owner``: the run that made the call still owns its poll (not stalled, not killed)."""
        cid = call.container_id
        answer: object
        if how == "posted":
            media = f"m{cid}x{call.n}"
            self.posted[cid] = media
            self.could_have_posted(call)
            if owner:
                self.answered_media[cid] = media
            answer = media
        elif how == "ambiguous_posted":
            self.posted[cid] = f"m{cid}x{call.n}"
            self.could_have_posted(call)
            answer = RequestTimeoutError("no answer within 1s")
        elif how == "ambiguous_not_posted":
            self.could_have_posted(call)
            answer = GraphAPIError("An unexpected error has occurred", code=2, http_status=500)
        elif how == "not_ready":
            answer = GraphAPIError("Media Not Found", code=24, subcode=4279009, http_status=400)
        elif how == "throttled":
            answer = GraphAPIError("Application request limit reached", code=4, http_status=400)
        else:
            answer = GraphAPIError("Invalid parameter", code=100, http_status=400)
        if how in ("not_ready", "failed"):
            self.certain_failures[cid] += 1
        call.future.set_result(answer)

    def abandon(self, call: Call) -> None:
        """The run that made ``call`` vanished: the request went out, its answer never came."""
        if call.kind == "publish":
            self.could_have_posted(call)

    def could_have_posted(self, call: Call) -> None:
        self.maybe_posted.add(call.container_id)
        self.maybe_posted_polls.add((call.container_id, call.generation))


@dataclass
class Receiver:
    """A webhook receiver on loopback: ``/hook/<n>`` answers 2xx while ``ok``, else 500."""

    ok: bool = True
    got: list[tuple[int, bytes]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.got.append((int(request.match_info["n"]), await request.read()))
        return web.Response(status=204 if self.ok else 500)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{n}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{n}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
