"""The JSON handlers of ``/v1`` (the event stream: ``worker.web.sse``).

Each handler checks its input with ``worker.web.requests`` (pure), acts through the client or
the admin store, and answers with ``worker.web.views`` (pure); errors are ``ApiError``s, turned
into JSON by the error middleware (``worker.web.app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from worker.client.client import EnqueueOutcome
from worker.core.errors import InvalidIdError, ScopeError
from worker.core.result import PollResult
from worker.core.tracing import TraceparentError, producer_traceparent
from worker.ops import metrics, tracing
from worker.ops.health import live_beats
from worker.ops.stats import read_minutes
from worker.store.admin import CancelOutcome, ReplayOutcome
from worker.web import openapi
from worker.web.context import AUTH, WebContext, ctx_of, holder
from worker.web.errors import ApiError
from worker.web.requests import (
    ACCOUNT_CURSOR_PATTERN,
    INFLIGHT_CURSOR_PATTERN,
    MAX_TRACEPARENT_HEADER,
    NO_BODY,
    STREAM_CURSOR_PATTERN,
    EnqueueSpec,
    parse_account,
    parse_cancel,
    parse_container_id,
    parse_cursor,
    parse_enqueue,
    parse_kind,
    parse_letter_id,
    parse_limit,
    parse_since,
    parse_statuses,
    parse_until,
    parse_wait,
)
from worker.web.views import (
    account_json,
    dead_letter_json,
    event_json,
    inflight_json,
    minute_json,
    outcome_json,
    page_json,
    result_json,
    worker_json,
)

T = TypeVar("T")

JSON_TYPES = ("application/json",)
CHART_MINUTES = 60


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)


async def read_json(request: web.Request, *, required: bool) -> Any:
    """The body as JSON: 415 without a JSON content type, 413 over API_MAX_BODY_BYTES, 400 when
    it does not parse. ``NO_BODY`` for an empty optional body (JSON ``null`` is None)."""
    limit = ctx_of(request).settings.api_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("body_too_large", f"the body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(ctx_of(request).settings.api_body_timeout_seconds):
            raw = await request.read()  # aiohttp refuses more than client_max_size (the same)
    except TimeoutError:
        raise ApiError("body_timeout") from None
    if not raw.strip():
        if required:
            raise ApiError("invalid_body", "a JSON body is required")
        return NO_BODY
    if request.content_type not in JSON_TYPES:
        raise ApiError("unsupported_media_type", "send Content-Type: application/json")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError("malformed_json", f"the body is not JSON: {str(exc)[:120]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def until_stopping(ctx: WebContext, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run ``work`` unless the server starts stopping first: (done, its result)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(ctx.stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None


# ----- containers ------------------------------------------------------------------------------


async def enqueue(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    spec = parse_enqueue(
        await read_json(request, required=True), max_batch=ctx.settings.api_max_batch
    )
    # The producer of the key (None: an operator's key, or no keys: the default producer).
    verdict = request.get(AUTH)
    producer = verdict.key.producer if verdict is not None and verdict.key is not None else None
    # The producer's trace (README "Tracing"): the polls join it. A header that is not a valid
    # W3C value is ignored, as Trace Context says a receiver must (the polls start their own
    # trace): a request is never refused for its tracing. The Python client, the CLI and the
    # intake refuse a bad value instead: there it is an argument the producer chose to pass.
    raw = request.headers.get("traceparent", "")
    if len(raw) > MAX_TRACEPARENT_HEADER:
        # Size first, as at every door: that is no trace context.
        raise ApiError("invalid_traceparent", f"over {MAX_TRACEPARENT_HEADER} characters")
    try:
        given = producer_traceparent(raw)
    except TraceparentError:
        given = None
    with tracing.active().span(
        tracing.POLL,
        parent=given,
        kind="server",
        attributes={"threads_poller.door": "http", "threads_poller.containers": len(spec.ids)},
    ) as span:
        outcomes = await _enqueue(ctx, spec, producer, span.traceparent or given)
        for o in outcomes[:1] if spec.single else ():
            span.set("threads_poller.container_id", o.container_id)
            span.set("threads_poller.enqueue.outcome", o.outcome)
    # Location names the poll the request started or found; a refusal of an unknown container
    # (no status: nothing exists there) has none to name.
    exists = bool(outcomes) and (outcomes[0].outcome != "refused" or bool(outcomes[0].status))
    headers = {"Location": f"/v1/containers/{spec.ids[0]}"} if spec.single and exists else None
    return ok(
        {
            "outcomes": [
                outcome_json(o.container_id, o.outcome, o.status, o.reason) for o in outcomes
            ]
        },
        202,
        headers,
    )


async def _enqueue(
    ctx: WebContext, spec: EnqueueSpec, producer: str | None, traceparent: str | None
) -> list[EnqueueOutcome]:
    try:
        if spec.children:
            outcomes = [
                await ctx.client.enqueue_carousel(
                    spec.ids[0],
                    spec.children,
                    account=spec.account,
                    force=spec.force,
                    publish=spec.publish,
                    webhook_url=spec.webhook_url,
                    window_seconds=spec.window_seconds,
                    reply_to=spec.reply_to,
                    producer=producer,
                    traceparent=traceparent,
                    platform=spec.platform,
                )
            ]
        else:
            outcomes = await ctx.client.enqueue_many(
                spec.ids,
                account=spec.account,
                force=spec.force,
                publish=spec.publish,
                webhook_url=spec.webhook_url,
                window_seconds=spec.window_seconds,
                reply_to=spec.reply_to,
                producer=producer,
                traceparent=traceparent,
                platform=spec.platform,
            )
    except ScopeError as exc:
        # Named: what the producer may not ask for; every outcome when Redis refused part of it.
        details: dict[str, Any] = {"producer": exc.producer, "refused": list(exc.refused)}
        if exc.outcomes:
            details["outcomes"] = [
                outcome_json(o.container_id, o.outcome, o.status, o.reason)  # type: ignore[attr-defined]
                for o in exc.outcomes
            ]
        raise ApiError("out_of_scope", str(exc), **details) from None
    except InvalidIdError as exc:
        raise ApiError("invalid_id", f"refused, nothing enqueued: {exc}") from None
    except ValueError as exc:
        raise ApiError("invalid_window", str(exc)) from None
    return outcomes


def _result_response(result: PollResult, now: float | None = None) -> web.Response:
    headers: dict[str, str] = {}
    if not result.final and now is not None and result.next_check_at:
        headers["Retry-After"] = str(max(1, math.ceil(result.next_check_at - now)))
    return ok(result_json(result), 200 if result.final else 202, headers)


async def container(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cid = parse_container_id(request.match_info["container_id"])
    wait = parse_wait(request.query.get("wait"), max_seconds=ctx.settings.api_max_wait_seconds)
    result: PollResult | None
    if wait:
        # Counted before the first await (each long poll holds a Redis connection).
        who = holder(request)
        ctx.take_wait("long_poll", who)
        try:
            done, result = await until_stopping(ctx, ctx.client.wait(cid, timeout=wait))
            if not done:
                result = await ctx.client.get(cid)
        finally:
            ctx.give_wait("long_poll", who)
    else:
        result = await ctx.client.get(cid)
    if result is None:
        raise ApiError("container_not_found", f"container {cid} is unknown (or its result expired)")
    return _result_response(result, await ctx.admin.now() if not result.final else None)


async def history(request: web.Request) -> web.Response:
    """A container's history (README, "History"): what any key may read of the container
    (``container`` above), told step by step."""
    ctx = ctx_of(request)
    cid = parse_container_id(request.match_info["container_id"])
    events = await ctx.client.history(cid)
    if not events and await ctx.client.get(cid) is None:
        raise ApiError("container_not_found", f"container {cid} is unknown (or its result expired)")
    return ok({"container_id": cid, "events": [e.as_dict() for e in events]})


async def cancel(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cid = parse_container_id(request.match_info["container_id"])
    reason = parse_cancel(await read_json(request, required=False))
    done = await ctx.admin.cancel(cid, reason=reason)
    if done.outcome is CancelOutcome.CANCELLED and done.result is not None:
        return ok(
            {"outcome": "cancelled", "event_id": done.event_id, "result": result_json(done.result)}
        )
    raise cancel_error(cid, done.outcome, done.status)


def cancel_error(cid: str, outcome: CancelOutcome, status: str) -> ApiError:
    if outcome is CancelOutcome.UNKNOWN:
        return ApiError(
            "container_not_found", f"container {cid} is unknown (or its result expired)"
        )
    if outcome is CancelOutcome.FINAL:
        return ApiError(
            "already_final", f"container {cid} is already final ({status})", status=status
        )
    if outcome is CancelOutcome.PUBLISHING:
        return ApiError(
            "publish_in_flight",
            f"container {cid}: a publish call may be under way; cancel again once it is recorded",
        )
    return ApiError("conflict", f"container {cid} was enqueued again while cancelling")


# ----- reads -----------------------------------------------------------------------------------


async def _finals(request: web.Request, *, failed_only: bool) -> web.Response:
    ctx = ctx_of(request)
    q = request.query
    since = parse_since(q.get("since"))
    limit = parse_limit(q.get("limit"), default=100)
    cursor = parse_cursor(q.get("cursor"), STREAM_CURSOR_PATTERN)
    statuses, account, until = (
        parse_statuses(q.get("status")),
        parse_account(q.get("account")),
        parse_until(q.get("until")),
    )
    now = await ctx.admin.now()
    try:
        page = await ctx.admin.finals(
            since_seconds=since,
            now=now,
            failed_only=failed_only,
            limit=limit,
            cursor=cursor,
            statuses=statuses,
            account=account,
            until_seconds=until,
        )
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None
    return ok(page_json([event_json(e) for e in page.items], page.next_cursor, since_s=since))


async def finals(request: web.Request) -> web.Response:
    return await _finals(request, failed_only=False)


async def failures(request: web.Request) -> web.Response:
    return await _finals(request, failed_only=True)


async def inflight(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    limit = parse_limit(request.query.get("limit"))
    cursor = parse_cursor(request.query.get("cursor"), INFLIGHT_CURSOR_PATTERN)
    account = parse_account(request.query.get("account"))
    now = await ctx.admin.now()
    try:
        page = await ctx.admin.inflight(limit=limit, cursor=cursor, account=account)
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None
    _, past = await ctx.admin.inflight_counts(now=now, overdue_after=ctx.stuck_after)
    return ok(
        page_json(
            [inflight_json(p, now) for p in page.items],
            page.next_cursor,
            total=page.total or 0,
            past_deadline=past,
            now=now,
        )
    )


async def accounts(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    limit = parse_limit(request.query.get("limit"), default=100)
    cursor = parse_cursor(request.query.get("cursor"), ACCOUNT_CURSOR_PATTERN)
    now = await ctx.admin.now()
    try:
        page = await ctx.admin.accounts(limit=limit, cursor=cursor)
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None
    return ok(
        page_json(
            [account_json(a, now) for a in page.items],
            page.next_cursor,
            total=page.total or 0,
            now=now,
        )
    )


async def workers(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    now, beats = await live_beats(ctx.redis, ctx.admin.keys)
    beats.sort(key=lambda b: b.name)
    return ok({"items": [worker_json(b, now) for b in beats], "now": now})


# The console and /v1/overview re-use a sample this young (one round serves every viewer).
SAMPLE_MAX_AGE_SECONDS = 1.0


async def fresh_sample(ctx: WebContext) -> metrics.DeploymentSample:
    """The sampler's last round, or a round now when it is older than a second."""
    now = await ctx.admin.now()
    if ctx.sample is None or now - ctx.sampled_at > SAMPLE_MAX_AGE_SECONDS:
        ctx.sample = await metrics.sample(ctx.admin, now, overdue_after=ctx.stuck_after)
        ctx.sampled_at = now
    return ctx.sample


async def overview_data(ctx: WebContext) -> dict[str, Any]:
    s = await fresh_sample(ctx)
    now = await ctx.admin.now()
    minutes = await read_minutes(ctx.redis, ctx.admin.keys, now=now, minutes=CHART_MINUTES)
    counts = await ctx.admin.dead_letter_counts()
    return {
        "now": now,
        "sampled_at": ctx.sampled_at,
        "inflight": s.inflight,
        "past_deadline": s.past_deadline,
        "queue": {"jobs": s.queued, "due": s.due, "lag_s": round(s.lag_s, 3)},
        # The webhook deliveries' own queue (claimed apart from the checks').
        "webhook_queue": {
            "jobs": s.webhooks_queued,
            "due": s.webhooks_due,
            "lag_s": round(s.webhooks_lag_s, 3),
        },
        "dead_letters": {kind.value: n for kind, n in counts.items()},
        "workers": {
            "alive": s.workers_alive,
            "accepting": s.workers_accepting,
            "saturation": round(s.saturation, 4),
        },
        "accounts": {
            "throttled": s.accounts_throttled,
            "token_rejected": s.tokens_rejected,
            "longest_throttle_s": round(s.longest_throttle_s, 3),
        },
        "minutes": [minute_json(m) for m in minutes],
    }


async def overview(request: web.Request) -> web.Response:
    return ok(await overview_data(ctx_of(request)))


async def openapi_doc(request: web.Request) -> web.Response:
    s = ctx_of(request).settings
    # This server's bounds, not the defaults: the document says what this server accepts.
    return ok(openapi.document(max_wait_seconds=s.api_max_wait_seconds, max_batch=s.api_max_batch))


async def healthz(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    if ctx.stopping.is_set():
        raise ApiError("shutting_down")
    try:
        await asyncio.wait_for(ctx.redis.ping(), 2.0)
    except Exception as exc:  # a timeout, a refused connection, a Redis error: all the same here
        raise ApiError(
            "redis_unavailable", f"Redis does not answer: {type(exc).__name__}"
        ) from None
    return ok({"status": "ok"})


# ----- dead letters ----------------------------------------------------------------------------


async def dead_letters(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    kind = parse_kind(request.match_info["kind"])
    limit = parse_limit(request.query.get("limit"))
    cursor = parse_cursor(request.query.get("cursor"), STREAM_CURSOR_PATTERN)
    try:
        page = await ctx.admin.dead_letters(kind, limit=limit, cursor=cursor)
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None
    return ok(
        page_json(
            [dead_letter_json(d) for d in page.items], page.next_cursor, total=page.total or 0
        )
    )


def replay_error(outcome: ReplayOutcome, letter_id: str) -> ApiError:
    if outcome is ReplayOutcome.GONE:
        return ApiError("dead_letter_not_found", f"no dead letter {letter_id}")
    if outcome is ReplayOutcome.BUSY:
        return ApiError("conflict", "a delivery of this webhook is already under way")
    reasons = {
        ReplayOutcome.TRUNCATED: "a value of the entry was cut short when it was dead-lettered",
        ReplayOutcome.UNREADABLE: "the dead letter's fields cannot be read",
        ReplayOutcome.EMPTY: "the dead letter has no fields to replay",
    }
    return ApiError("not_replayable", reasons.get(outcome, str(outcome)))


async def replay(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    kind = parse_kind(request.match_info["kind"])
    letter_id = parse_letter_id(request.match_info["letter_id"])
    done = await ctx.admin.replay(kind, letter_id)
    if done.outcome is not ReplayOutcome.REPLAYED:
        raise replay_error(done.outcome, letter_id)
    return ok({"outcome": "replayed", "id": letter_id, "entry_id": done.entry_id or None})


async def discard(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    kind = parse_kind(request.match_info["kind"])
    letter_id = parse_letter_id(request.match_info["letter_id"])
    if not await ctx.admin.discard(kind, letter_id):
        raise ApiError("dead_letter_not_found", f"no dead letter {letter_id}")
    return ok({"outcome": "discarded", "id": letter_id})
