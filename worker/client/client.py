"""``PollerClient``: the one object a producer or a reader holds.

    async with PollerClient.from_settings(settings) as client:   # opens (and closes) its Redis
        out = await client.enqueue("17889615691921648")
        result = await client.wait("17889615691921648", timeout=360)

    client = PollerClient(redis, window_seconds=300)  # or on a Redis you already have

Everything a producer decides is a parameter of the client (or of the call): the key prefix of
the deployment, the window a new poll gets, how long its result is kept. Nothing is read from
the environment here; ``from_settings`` is the one bridge from ``Settings``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from redis.asyncio import Redis

from api_client.platforms import user_id_of
from config import Settings
from config.producers import Producers, ProducersError, Scope, check_name, refusal_message
from worker.core.errors import InvalidIdError, ScopeError
from worker.core.history import HistoryEvent
from worker.core.ids import (
    poll_account,
    validate_batch,
    validate_children,
    validate_id,
    validate_platform,
)
from worker.core.result import PollResult
from worker.core.targets import WebhookPolicy, webhook_policy
from worker.core.tracing import TraceparentError, producer_traceparent
from worker.store.connections import open_redis
from worker.store.keys import Keys
from worker.store.results import Enqueued, EnqueueRequest, EnqueueStatus, ResultStore
from worker.store.targets import Resolve, check_webhook_url

# The defaults of a deployment that sets nothing (they equal Settings' defaults; a unit test
# holds them together).
DEFAULT_KEY_PREFIX = "threads-poller"
DEFAULT_WINDOW_SECONDS = 300.0  # POLL_MAX_SECONDS
DEFAULT_RESULT_TTL_SECONDS = 7 * 86400  # RESULT_TTL_SECONDS
DEFAULT_EVENTS_MAX_LEN = 100_000  # EVENTS_MAX_LEN
DEFAULT_ACCOUNT_REQUESTS_PER_SECOND = 5.0  # ACCOUNT_MAX_REQUESTS_PER_SECOND
MAX_WINDOW_SECONDS = 86400.0  # POLL_MAX_SECONDS' upper bound

# How long ``wait`` looks for an id it does not know before it answers "unknown".
UNKNOWN_GRACE_SECONDS = 2.0

# KEY_PREFIX's characters plus ":" (this door always took it), with at most one hash tag.
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:-]*(\{[A-Za-z0-9_.:-]+\}[A-Za-z0-9_.:-]*)?")


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    container_id: str
    outcome: EnqueueStatus  # enqueued | restarted | duplicate | final | refused
    status: str  # the container's status right after the call
    # Why it was refused (a carousel's rules, README "Carousels and replies"); "" otherwise.
    reason: str = ""

    @classmethod
    def of(cls, e: Enqueued) -> EnqueueOutcome:
        return cls(e.container_id, e.outcome, e.status, e.reason)


def _ids(container_ids: Iterable[str]) -> list[str]:
    if isinstance(container_ids, str | bytes):
        # A lone id would otherwise be iterated digit by digit.
        raise InvalidIdError("container ids must be a list of ids, not one string")
    return validate_batch(container_ids)


def build_requests(
    container_ids: Iterable[str],
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    webhook_url: str | None = None,
    reply_to: str | None = None,
    traceparent: str | None = None,
    platform: str | None = None,
) -> list[EnqueueRequest]:
    """Validate the ids, the account and the platform: one bad one raises InvalidIdError
    (nothing is written). The account is stored as its key on the platform (``poll_account``).

    ``webhook_url`` goes in as given: ``check_webhook_url`` has judged it. Repeated ids are
    folded into one request, in order of first appearance."""
    on = validate_platform(platform)
    acct = poll_account(account, on)
    reply = validate_id(reply_to, what="reply_to id") if reply_to is not None else None
    trace = check_traceparent_arg(traceparent)
    ids = _ids(container_ids)
    return [
        EnqueueRequest(
            cid,
            acct,
            force,
            publish,
            webhook_url,
            reply_to=reply,
            traceparent=trace,
            platform=on.name.value,
        )
        for cid in dict.fromkeys(ids)
    ]


def check_traceparent_arg(traceparent: str | None) -> str | None:
    """A producer's W3C ``traceparent`` (InvalidIdError when it is not one); when none is given
    and the producer's own process traces with OpenTelemetry, its current span's (so the poll
    joins the producer's trace without passing it by hand)."""
    if traceparent is None:
        return ambient_traceparent()
    try:
        return producer_traceparent(traceparent)
    except TraceparentError as exc:
        raise InvalidIdError(str(exc)) from None


def ambient_traceparent() -> str | None:
    """The producer process's current OpenTelemetry span, as a ``traceparent``; None when the
    process does not use OpenTelemetry (it is never imported here for that)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def build_carousel(
    parent: str,
    children: Iterable[str],
    *,
    account: str | None = None,
    force: bool = False,
    publish: bool = False,
    reply_to: str | None = None,
    traceparent: str | None = None,
    platform: str | None = None,
) -> EnqueueRequest:
    """A carousel: its parent container and its 2 to 20 item containers (10 on Instagram),
    validated (a webhook URL is judged and set by the caller, as for ``build_requests``'
    batches)."""
    (req,) = build_requests(
        [parent],
        account=account,
        force=force,
        publish=publish,
        reply_to=reply_to,
        traceparent=traceparent,
        platform=platform,
    )
    kids = validate_children(
        list(children),
        parent=req.container_id,
        max_children=validate_platform(platform).max_children,
    )
    return dataclasses.replace(req, children=kids)


def _window(value: float, result_ttl_seconds: int) -> float:
    if not (math.isfinite(value) and 0 <= value <= MAX_WINDOW_SECONDS):
        raise ValueError(
            f"window_seconds must be between 0 and {MAX_WINDOW_SECONDS:g}, got {value}"
        )
    if value >= result_ttl_seconds:
        # The result hash and the job expire after result_ttl_seconds: mid-poll, here.
        raise ValueError(
            f"window_seconds ({value:g}) must be shorter than result_ttl_seconds "
            f"({result_ttl_seconds})"
        )
    return float(value)


class PollerClient:
    """Enqueue container ids and read their results, in one deployment (one key prefix).

    ``window_seconds`` is the window every poll this client starts gets (a call may pass its
    own); the worker polls until the window ends, then reports TIMED_OUT.
    ``account_requests_per_second`` only matters before any worker has run: the workers publish
    their pacing, and enqueue follows theirs. The client never closes a Redis it was given.

    ``webhook_policy`` says where a ``webhook_url`` may point (default: public addresses only,
    the workers' default); ``from_settings`` takes it from WEBHOOK_ALLOWED_HOSTS and
    WEBHOOK_ALLOW_PRIVATE_ADDRESSES. Without WEBHOOK_SECRET of its own, the client asks what
    the workers published (``{prefix}:config``) and refuses a URL they could not sign for.
    ``webhook_resolve`` replaces the system's DNS lookup of its host (tests, a custom resolver).

    ``producers`` (``from_settings``: PRODUCERS) and ``producer`` say whose scope applies at this
    door (README "Producers"): every call is checked against it before anything is written
    (``ScopeError``), and ``enqueue.lua`` checks it again with the write. A call may name
    another producer (``producer=``). Without either, the one ``default`` producer (which,
    unconfigured, may do everything). The scope is a door for a cooperative caller: the
    ``enqueuer`` role this client needs is trusted, and could write the queue itself.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        result_ttl_seconds: int = DEFAULT_RESULT_TTL_SECONDS,
        events_max_len: int = DEFAULT_EVENTS_MAX_LEN,
        account_requests_per_second: float = DEFAULT_ACCOUNT_REQUESTS_PER_SECOND,
        webhook_policy: WebhookPolicy | None = None,
        webhook_resolve: Resolve | None = None,
        producers: Producers | None = None,
        producer: str | None = None,
    ) -> None:
        if not (1 <= len(key_prefix) <= 64 and _KEY_PREFIX.fullmatch(key_prefix)):
            raise ValueError(
                f"key_prefix {key_prefix[:80]!r} is not 1 to 64 of [A-Za-z0-9_.:-] with at most "
                "one hash tag {...}"
            )
        if result_ttl_seconds < 60:
            raise ValueError(f"result_ttl_seconds must be at least 60, got {result_ttl_seconds}")
        if events_max_len < 100:
            raise ValueError(f"events_max_len must be at least 100, got {events_max_len}")
        if not (math.isfinite(account_requests_per_second) and account_requests_per_second >= 0):
            raise ValueError("account_requests_per_second must be a finite number >= 0")
        self.redis = redis
        self.window_seconds = _window(window_seconds, result_ttl_seconds)
        self._store = ResultStore(
            redis,
            Keys(key_prefix),
            window_seconds=self.window_seconds,
            result_ttl_seconds=result_ttl_seconds,
            events_max_len=events_max_len,
            account_requests_per_second=account_requests_per_second,
        )
        self.webhook_policy = webhook_policy or WebhookPolicy()
        self._resolve = webhook_resolve
        self._owns_redis = False
        self.producers = producers or Producers.unrestricted()
        self.producer = self.scope(producer)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis: Redis | None = None,
        *,
        webhook_resolve: Resolve | None = None,
        producer: str | None = None,
    ) -> PollerClient:
        """A client of the deployment ``settings`` describe; without ``redis`` it opens its own
        (``open_redis``: REDIS_URL or Sentinel) and ``aclose`` closes it."""
        policy = webhook_policy(settings)
        client = cls(
            redis if redis is not None else open_redis(settings),
            key_prefix=settings.key_prefix,
            window_seconds=settings.poll_max_seconds,
            result_ttl_seconds=settings.result_ttl_seconds,
            events_max_len=settings.events_max_len,
            account_requests_per_second=settings.account_max_requests_per_second,
            webhook_policy=policy,
            webhook_resolve=webhook_resolve,
            producers=settings.producer_scopes(),
            producer=producer,
        )
        client._owns_redis = redis is None
        return client

    def scope(self, producer: str | Scope | None = None) -> Scope:
        """The scope of ``producer`` (None: this client's own); ScopeError for a name that is
        not configured."""
        if isinstance(producer, Scope):
            return producer
        if producer is None and hasattr(self, "producer"):
            return self.producer
        try:
            return self.producers.get(producer)
        except ProducersError as exc:
            raise ScopeError(str(exc), producer=producer or "") from None

    @staticmethod
    def check_scope(
        scope: Scope,
        *,
        account: str | None,
        force: bool,
        publish: bool,
        webhook_url: str | None,
    ) -> None:
        """ScopeError, naming what is not allowed, when ``scope`` does not allow the request."""
        refused = scope.refusals(
            account=account, force=force, publish=publish, webhook=webhook_url is not None
        )
        if refused:
            raise ScopeError(
                f"refused, nothing enqueued: {refusal_message(scope, refused)}",
                producer=scope.name,
                refused=tuple(refused),
            )

    @staticmethod
    def _raise_forbidden(scope: Scope, done: list[Enqueued]) -> None:
        """ScopeError when enqueue.lua refused any of ``done`` by the scope (another
        producer's poll); the other outcomes are in the error."""
        bad = [e for e in done if e.forbidden]
        if bad:
            said = "; ".join(f"{e.container_id}: {e.reason}" for e in bad[:5])
            raise ScopeError(
                f"refused: {said}" + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""),
                producer=scope.name,
                refused=tuple(e.reason for e in bad),
                outcomes=tuple(EnqueueOutcome.of(e) for e in done),
            )

    @property
    def key_prefix(self) -> str:
        return self._store.keys.prefix

    async def aclose(self) -> None:
        """Close the Redis connection ``from_settings`` opened (a given one is left open)."""
        if self._owns_redis:
            self._owns_redis = False
            await self.redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Producers.

    async def enqueue_many(
        self,
        container_ids: Iterable[str],
        *,
        account: str | None = None,
        force: bool = False,
        publish: bool = False,
        webhook_url: str | None = None,
        window_seconds: float | None = None,
        reply_to: str | None = None,
        producer: str | None = None,
        traceparent: str | None = None,
        platform: str | None = None,
    ) -> list[EnqueueOutcome]:
        """Start polling each id (one round trip); one outcome per distinct id, in order.

        Everything is validated first: one bad id, account or URL raises InvalidIdError and
        writes nothing. A URL must be http(s) and, by ``webhook_policy``, resolve to allowed
        addresses only (the workers check again when they deliver). An id already being polled
        creates no job (``duplicate``); one already
        final is left alone (``final``) unless ``force``. ``publish=True`` publishes each
        container once FINISHED; ``webhook_url`` gets the final state, signed.
        ``window_seconds`` (default: the client's) fixes each new poll's window. ``reply_to``
        (a media id) says the containers are replies: their publish spends the reply quota and
        waits PUBLISH_REPLY_SETTLE_SECONDS after FINISHED.

        ``producer`` (default: the client's) is whose scope applies: a request it does not allow
        raises ScopeError before anything is written; a container another producer started
        that this one may not restart is refused by enqueue.lua (ScopeError after the call,
        with every outcome of the batch in ``outcomes``).

        ``traceparent`` (W3C Trace Context) puts the polls in the producer's trace (README
        "Tracing"); without it, the current OpenTelemetry span of this process, if any.

        ``platform``: ``threads`` (the default) or ``instagram``, whose containers these are;
        an Instagram ``account`` is an Instagram user id (stored as ``instagram:<id>``)."""
        window = self._window_of(window_seconds)
        scope = self.scope(producer)
        requests = build_requests(
            container_ids,
            account=account,
            force=force,
            publish=publish,
            reply_to=reply_to,
            traceparent=traceparent,
            platform=platform,
        )
        self.check_scope(
            scope,
            account=requests[0].account if requests else account,
            force=force,
            publish=publish,
            webhook_url=webhook_url,
        )
        requests = [dataclasses.replace(r, producer=scope) for r in requests]
        if webhook_url is not None:
            hook = await self._judged_webhook(webhook_url)
            requests = [dataclasses.replace(r, webhook_url=hook) for r in requests]
        done = await self._store.enqueue(requests, window_seconds=window)
        self._raise_forbidden(scope, done)
        return [EnqueueOutcome.of(e) for e in done]

    async def _judged_webhook(self, webhook_url: str) -> str:
        """The URL as the webhook policy accepts it (InvalidIdError otherwise)."""
        policy = self.webhook_policy
        if policy.signing is None:
            signing = await self._store.workers_sign_webhooks()
            if signing is None:
                # No worker has said yet, and this process holds no secret: accepting it could
                # mean a delivery dead-lettered much later for want of a signature.
                raise InvalidIdError(
                    "webhook url given but no worker of this deployment has said yet whether "
                    "it can sign deliveries (none has started), and this process has no "
                    "WEBHOOK_SECRET: start the workers first (with WEBHOOK_SECRET), or set "
                    "WEBHOOK_SECRET here too"
                )
            policy = dataclasses.replace(policy, signing=signing)
        return await check_webhook_url(webhook_url, policy, resolve=self._resolve)

    def _window_of(self, window_seconds: float | None) -> float:
        if window_seconds is None:
            return self.window_seconds
        return _window(window_seconds, self._store.result_ttl_seconds)

    async def enqueue_carousel(
        self,
        parent: str,
        children: Iterable[str],
        *,
        account: str | None = None,
        force: bool = False,
        publish: bool = False,
        webhook_url: str | None = None,
        window_seconds: float | None = None,
        reply_to: str | None = None,
        producer: str | None = None,
        traceparent: str | None = None,
        platform: str | None = None,
    ) -> EnqueueOutcome:
        """Poll a carousel as one unit: its 2 to 20 children each get their own poll (and
        result); the parent is polled only once every child is FINISHED, and ends
        ``CHILD_FAILED`` (naming the child) as soon as one ends otherwise. ``publish`` publishes
        the parent once FINISHED (the children are never published on their own). The outcome
        is the parent's; a parent already being polled starts nothing new (``duplicate``)."""
        scope = self.scope(producer)
        req = build_carousel(
            parent,
            children,
            account=account,
            force=force,
            publish=publish,
            reply_to=reply_to,
            traceparent=traceparent,
            platform=platform,
        )
        self.check_scope(
            scope, account=req.account, force=force, publish=publish, webhook_url=webhook_url
        )
        req = dataclasses.replace(req, producer=scope)
        if webhook_url is not None:
            req = dataclasses.replace(req, webhook_url=await self._judged_webhook(webhook_url))
        (done,) = await self._store.enqueue([req], window_seconds=self._window_of(window_seconds))
        self._raise_forbidden(scope, [done])
        return EnqueueOutcome.of(done)

    async def enqueue(
        self,
        container_id: str,
        *,
        account: str | None = None,
        force: bool = False,
        publish: bool = False,
        webhook_url: str | None = None,
        window_seconds: float | None = None,
        reply_to: str | None = None,
        producer: str | None = None,
        traceparent: str | None = None,
        platform: str | None = None,
    ) -> EnqueueOutcome:
        """``enqueue_many`` of one id."""
        (outcome,) = await self.enqueue_many(
            [container_id],
            account=account,
            force=force,
            publish=publish,
            webhook_url=webhook_url,
            window_seconds=window_seconds,
            reply_to=reply_to,
            producer=producer,
            traceparent=traceparent,
            platform=platform,
        )
        return outcome

    async def submit_many(
        self,
        container_ids: Iterable[str],
        *,
        account: str | None = None,
        force: bool = False,
        publish: bool = False,
        webhook_url: str | None = None,
        producer: str | None = None,
        traceparent: str | None = None,
        platform: str | None = None,
    ) -> list[str]:
        """Hand each id to the workers through the intake stream (one ``XADD`` each, one round
        trip): what a Redis user with the ``producer`` role may do, and nothing more. Returns
        the entry ids. The same checks as ``enqueue_many`` run here first, but the outcome
        comes later: the workers poll the entries, or dead-letter them (``{prefix}:intake:dead``
        says why; the WEBHOOK_SECRET check happens there, since this role cannot read
        ``{prefix}:config``). The window is the workers' POLL_MAX_SECONDS.

        ``producer`` (default: the client's) names the stream, ``{prefix}:intake:{producer}``
        (``default``'s is ``{prefix}:intake``), whose scope the workers apply; when this client
        knows that producer's scope, a request outside it raises ScopeError here first."""
        name = producer if producer is not None else self.producer.name
        try:
            # A stream's name: never the dead-letter stream ("dead"), nor a pattern.
            check_name(name)
        except ProducersError as exc:
            raise ScopeError(str(exc), producer=name[:40]) from None
        requests = build_requests(
            container_ids,
            account=account,
            force=force,
            publish=publish,
            traceparent=traceparent,
            platform=platform,
        )
        if name in self.producers.scopes:
            # A producer-only Redis user may not know its scope (the workers do): then the
            # workers dead-letter what it does not allow.
            self.check_scope(
                self.producers.scopes[name],
                account=requests[0].account if requests else account,
                force=force,
                publish=publish,
                webhook_url=webhook_url,
            )
        hook = None
        if webhook_url is not None:
            hook = await check_webhook_url(webhook_url, self.webhook_policy, resolve=self._resolve)
        async with self.redis.pipeline(transaction=False) as pipe:
            for req in requests:
                fields = {"container_id": req.container_id}
                # The entry names the user id and the platform, as a producer writes them;
                # the workers build the account key again (worker.core.ids.poll_account).
                if req.platform != "threads":
                    fields["platform"] = req.platform
                if user_id_of(req.account or ""):
                    fields["account"] = user_id_of(req.account or "")
                if force:
                    fields["force"] = "1"
                if publish:
                    fields["publish"] = "1"
                if hook:
                    fields["webhook_url"] = hook
                if req.traceparent:
                    fields["traceparent"] = req.traceparent
                pipe.xadd(self._store.keys.intake_of(name), fields)  # type: ignore[arg-type]
            replies = await pipe.execute()
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies]

    # Readers.

    async def get(self, container_id: str) -> PollResult | None:
        """The stored state, or None when the id was never enqueued (or its result expired)."""
        return await self._store.load(validate_id(container_id))

    async def history(self, container_id: str) -> list[HistoryEvent]:
        """The container's history, oldest first: its enqueues, checks (API status, latency,
        error), throttle pauses and pacing waits, publish calls and answers, webhook attempts,
        cancel and final record (README, "History"); [] when it has none (never enqueued, or
        expired with its result)."""
        return await self._store.history(validate_id(container_id))

    async def get_many(self, container_ids: Iterable[str]) -> list[PollResult | None]:
        """``get`` of each id (one round trip), in the order given, repeats included."""
        ids = _ids(container_ids)
        return await self._store.load_many(ids) if ids else []

    async def wait(
        self,
        container_id: str,
        *,
        timeout: float,  # noqa: ASYNC109 - how long to wait is the call's point
    ) -> PollResult | None:
        """Block until the container is final or ``timeout`` seconds pass; return the last state
        (None after at most UNKNOWN_GRACE_SECONDS: an id that was never enqueued, or whose
        result expired, will not become final by waiting; the grace covers an id just handed
        to the intake stream, which a worker turns into a poll within milliseconds). A timeout
        <= 0 looks once.

        Wakes on the events stream (XREAD BLOCK) rather than polling the hash; the hash is
        re-read at least once a second so a trimmed stream or a missed event cannot make it
        hang."""
        cid = validate_id(container_id)
        deadline = time.monotonic() + timeout
        unknown_until = time.monotonic() + UNKNOWN_GRACE_SECONDS
        last_id = "$"
        while True:
            result = await self._store.load(cid)
            if result is not None and result.final:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (result is None and time.monotonic() >= unknown_until):
                return result
            block_ms = max(1, int(min(remaining, 1.0) * 1000))
            reply = await self.redis.xread(
                {self._store.keys.events: last_id}, block=block_ms, count=100
            )
            for _stream, entries in reply or []:
                if entries:
                    last_id = entries[-1][0]
            await asyncio.sleep(0)
