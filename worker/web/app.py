"""The aiohttp application of ``threads-poller serve``, and the process around it.

Middlewares, outermost first: request id, access log line and HTTP metrics; errors as JSON
(stable codes, ``worker.web.errors``); security headers; authentication (``worker.core.access``:
bearer keys in constant time, console sessions with CSRF). Request bodies are bounded by
aiohttp's ``client_max_size`` (``API_MAX_BODY_BYTES``).

``serve(settings)`` runs it: it refuses to start without an API key unless bound to loopback,
samples the deployment's gauges every few seconds (``worker.ops.metrics``, exported on
``METRICS_PORT`` by this process only), and on SIGTERM or SIGINT stops taking connections, ends
the event streams and long polls, lets running requests finish (``SHUTDOWN_GRACE_SECONDS``), and
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config import Settings
from worker.client.client import PollerClient
from worker.core.access import authorize, is_loopback
from worker.ops import metrics
from worker.store.admin import AdminStore
from worker.store.connections import open_redis
from worker.web import api, console, sse
from worker.web.auth import KeySource
from worker.web.context import (
    AUTH,
    AUTH_VIA,
    CTX,
    MAX_EVENT_STREAMS,
    REQUEST_ID,
    WebContext,
    ctx_of,
    stuck_after,
)
from worker.web.errors import CODES, FOR_STATUS, ApiError, error_body
from worker.web.routes import ROUTES, Route

log = logging.getLogger("threads_poller.web")
access_log = logging.getLogger("threads_poller.access")

SHUTDOWN_GRACE_SECONDS = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANDLERS: dict[str, Handler] = {
    "healthz": api.healthz,
    "openapi": api.openapi_doc,
    "enqueue": api.enqueue,
    "container": api.container,
    "cancel": api.cancel,
    "events": sse.events,
    "finals": api.finals,
    "failures": api.failures,
    "inflight": api.inflight,
    "accounts": api.accounts,
    "workers": api.workers,
    "overview": api.overview,
    "dead_letters": api.dead_letters,
    "replay": api.replay,
    "discard": api.discard,
    "console": console.console_page,
    "console_panels": console.console_panels,
    "login_form": console.login_form,
    "login": console.login,
    "logout": console.logout,
    "console_cancel": console.console_cancel,
    "console_replay": console.console_replay,
    "console_discard": console.console_discard,
    "static": console.static,
}
BY_NAME: dict[str, Route] = {r.name: r for r in ROUTES}

HTTP_REQUESTS = Counter(
    "threads_poller_http_requests",
    "Requests answered by serve, by route and status class (2xx, 3xx, 4xx, 5xx).",
    ["route", "status_class"],
    registry=metrics.SERVE_REGISTRY,
)
HTTP_SECONDS = Histogram(
    "threads_poller_http_request_duration_seconds",
    "Time to answer a request (event streams: until they end), by route.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0),
    registry=metrics.SERVE_REGISTRY,
)
EVENT_STREAMS = Gauge(
    "threads_poller_http_event_streams",
    "Event streams (GET /v1/events) open now.",
    registry=metrics.SERVE_REGISTRY,
)
for _route in ROUTES:
    HTTP_SECONDS.labels(route=_route.path)
    for _class in ("2xx", "3xx", "4xx", "5xx"):
        HTTP_REQUESTS.labels(route=_route.path, status_class=_class)
for _class in ("2xx", "3xx", "4xx", "5xx"):
    HTTP_REQUESTS.labels(route="unmatched", status_class=_class)


def route_of(request: web.Request) -> Route | None:
    name = request.match_info.route.name
    return BY_NAME.get(name) if name else None


class AccessLogger(AbstractAccessLogger):
    """One line per request in the service's log format (``worker.ops.logs``)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "request_id": request.get(REQUEST_ID, ""),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time * 1000, 1),
                "remote": request.remote,
                "auth": request.get(AUTH_VIA, ""),
            },
        )


@web.middleware
async def request_id_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    rid = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex[:16]
    request[REQUEST_ID] = rid
    t0 = time.perf_counter()
    route = route_of(request)
    label = route.path if route else "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        resp.headers["X-Request-Id"] = rid
        return resp
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        HTTP_REQUESTS.labels(route=label, status_class=f"{min(max(status // 100, 2), 5)}xx").inc()
        HTTP_SECONDS.labels(route=label).observe(time.perf_counter() - t0)


def _json_error(request: web.Request, code: str, message: str, **details: Any) -> web.Response:
    status = CODES[code][0]
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="threads-poller"'
    return web.json_response(
        error_body(code, message, request.get(REQUEST_ID, ""), **details),
        status=status,
        headers=headers,
    )


def _html_wanted(request: web.Request) -> bool:
    route = route_of(request)
    return (
        route is not None
        and not route.api
        and request.method == "GET"
        and "text/html" in request.headers.get("Accept", "")
    )


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if _html_wanted(request):
            body = (
                ctx_of(request)
                .templates.get_template("error.html")
                .render(code=exc.code, message=exc.message, status=exc.status)
            )
            return console.html(body, status=exc.status)
        return _json_error(request, exc.code, exc.message, **exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects
        code = FOR_STATUS.get(exc.status, "internal_error" if exc.status >= 500 else "not_found")
        message = CODES[code][1]
        if exc.status == 405:
            allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
            message = f"this route takes {', '.join(allowed)}" if allowed else message
        resp = _json_error(request, code, message)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except (RedisError, OSError) as exc:
        log.warning(
            "Redis error answering %s %s",
            request.method,
            request.path,
            extra={"request_id": request.get(REQUEST_ID), "error": type(exc).__name__},
        )
        return _json_error(request, "redis_unavailable", f"Redis: {type(exc).__name__}")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception(
            "request failed",
            extra={"request_id": request.get(REQUEST_ID), "path": request.path},
        )
        return _json_error(request, "internal_error", CODES["internal_error"][1])


CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@web.middleware
async def headers_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    _secure(resp)
    return resp


def _secure(resp: web.StreamResponse) -> None:
    h = resp.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    # same-origin: the browser still sends Origin on our own forms (login checks it).
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Cache-Control", "no-store")
    if (resp.content_type or "").startswith("text/html"):
        h.setdefault("Content-Security-Policy", CSP)


async def _on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
    # Also for redirects and errors raised as exceptions (they skip headers_mw's return).
    _secure(resp)


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    if route is None or route.auth == "none":
        return await handler(request)
    ctx = ctx_of(request)
    csrf = request.headers.get("X-CSRF-Token")
    if (
        csrf is None
        and request.method == "POST"
        and request.content_type
        in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        )
    ):
        form = await request.post()
        value = form.get("csrf")
        csrf = value if isinstance(value, str) else None
    verdict = authorize(
        ctx.keys.ring(),
        method=request.method,
        authorization=request.headers.get("Authorization"),
        session=request.cookies.get(console.SESSION_COOKIE),
        csrf=csrf,
        now=time.time(),
    )
    request[AUTH] = verdict
    request[AUTH_VIA] = verdict.via
    if not verdict.allowed:
        if verdict.status == 401 and _html_wanted(request):
            raise web.HTTPSeeOther("/login")
        raise ApiError(verdict.code, verdict.message)
    return await handler(request)


async def _sampler(ctx: WebContext) -> None:
    """The deployment's gauges, every SAMPLE_SECONDS (the console reads the last round too)."""
    while True:
        try:
            now = await ctx.admin.now()
            ctx.sample = await metrics.sample(ctx.admin, now, overdue_after=ctx.stuck_after)
            ctx.sampled_at = now
            EVENT_STREAMS.set(ctx.streams)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.SAMPLE_FAILURES.inc()
            log.warning("metrics: Redis gauges not sampled", exc_info=True)
        await asyncio.sleep(metrics.SAMPLE_SECONDS)


def build_app(
    settings: Settings,
    *,
    keys: KeySource | None = None,
    redis: Redis | None = None,
    sample: bool = True,
) -> web.Application:
    """The application; its Redis clients are opened here and closed on cleanup."""
    app = web.Application(
        middlewares=[request_id_mw, errors_mw, headers_mw, auth_mw],
        client_max_size=settings.api_max_body_bytes,
    )
    own = redis is None
    main = redis if redis is not None else open_redis(settings, worker=True)
    streams = open_redis(settings)
    ctx = WebContext(
        settings=settings,
        redis=main,
        stream_redis=streams,
        client=PollerClient.from_settings(settings, main),
        admin=AdminStore.from_settings(main, settings),
        keys=keys or KeySource.from_settings(settings),
        templates=console.templates(),
    )
    app[CTX] = ctx
    for route in ROUTES:
        app.router.add_route(route.method, route.path, HANDLERS[route.name], name=route.name)
    app.on_response_prepare.append(_on_prepare)
    tasks: list[asyncio.Task[None]] = []

    async def on_startup(_app: web.Application) -> None:
        if sample:
            tasks.append(asyncio.create_task(_sampler(ctx), name="sampler"))

    async def on_shutdown(_app: web.Application) -> None:
        # Event streams and long polls end now (they would hold the shutdown for its grace).
        ctx.stopping.set()

    async def on_cleanup(_app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await streams.aclose()
        if own:
            await main.aclose()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


class ServeRefusedError(Exception):
    """``serve`` cannot start with these settings (the message names the setting)."""


def check_exposure(settings: Settings, keys: KeySource) -> None:
    """No key and a non-loopback address: anyone who can reach the port could steer the
    deployment. Refused."""
    if not keys.ring().enabled and not is_loopback(settings.http_host):
        raise ServeRefusedError(
            f"invalid setting HTTP_HOST: {settings.http_host} is not a loopback address and no "
            "API key is configured (set API_KEYS, API_READ_KEYS or API_KEYS_FILE)"
        )


async def run(settings: Settings, keys: KeySource, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then shut down gracefully."""
    app = build_app(settings, keys=keys)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    metrics_server = None
    try:
        await site.start()
        if settings.metrics_port > 0:
            metrics_server = metrics.start_server(
                settings.metrics_port, registry=metrics.SERVE_REGISTRY
            )
        addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple)]
        log.info(
            "api listening on %s",
            ", ".join(addresses),
            extra={
                "auth": "api keys" if keys.ring().enabled else "none (loopback only)",
                "key_prefix": settings.key_prefix,
                "max_event_streams": MAX_EVENT_STREAMS,
                "stuck_after_s": stuck_after(settings),
            },
        )
        if not keys.ring().enabled:
            log.warning("no API key configured: every local process may read and write")
        await stop.wait()
        log.info(
            "shutting down: no new connections; running requests get %.0fs", SHUTDOWN_GRACE_SECONDS
        )
    finally:
        await runner.cleanup()
        await metrics.stop_server(metrics_server)
        log.info("api stopped")


def serve(settings: Settings, keys: KeySource) -> None:
    """``threads-poller serve``: until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, keys, stop)

    asyncio.run(main())
