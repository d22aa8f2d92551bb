"""The aiohttp application of ``threads-poller serve``, and the process around it.

Middlewares, outermost first: request id, access log line and HTTP metrics; errors as JSON
(stable codes, ``worker.web.errors``); security headers; authentication (``worker.web.access``:
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
import resource
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
from worker.ops import metrics
from worker.ops.loops import every
from worker.store.admin import AdminStore
from worker.store.connections import open_redis
from worker.store.sessions import SessionStore
from worker.web import api, console, sse
from worker.web.access import (
    SAFE_METHODS,
    authorize,
    is_loopback,
    loopback_host,
    same_origin,
    session_nonce,
)
from worker.web.auth import KeySource
from worker.web.context import (
    AUTH,
    AUTH_VIA,
    CTX,
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
    "history": api.history,
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
    "containers_page": console.containers_page,
    "container_page": console.container_page,
    "search": console.search,
    "console_confirm": console.confirm,
    "console_act": console.act,
    "login_form": console.login_form,
    "login": console.login,
    "logout": console.logout,
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
IDLE_CLOSED = Counter(
    "threads_poller_http_idle_connections_closed",
    "Idle client connections closed because serve held API_MAX_CONNECTIONS.",
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
    # The connection has a request under way: the connection guard leaves it alone.
    busy = request.app[CTX].busy
    conn = request.transport
    busy[conn] = busy.get(conn, 0) + 1
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
        left = busy.get(conn, 1) - 1
        if left > 0:
            busy[conn] = left
        else:
            busy.pop(conn, None)
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
    """A browser on the console's pages (or on a path that is none of ours) is answered with
    an HTML page, an API client (``/v1``, ``/healthz``, ``Accept: application/json``) with
    JSON."""
    route = route_of(request)
    if route is not None and route.api:
        return False
    if request.path.startswith("/v1/") or request.path in ("/v1", "/healthz"):
        return False
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


def _html_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    body = console.error_page(request, status=status, code=code, message=message)
    headers = {"Retry-After": "5"} if status == 503 else None
    return console.html(body, status=status, headers=headers)


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if _html_wanted(request):
            return _html_error(request, exc.status, exc.code, exc.message)
        resp = _json_error(request, exc.code, exc.message, **exc.details)
        resp.headers.update(exc.headers)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects
        code = FOR_STATUS.get(exc.status, "internal_error" if exc.status >= 500 else "not_found")
        message = CODES[code][1]
        if _html_wanted(request) and exc.status != 405:
            if exc.status == 404:
                message = f"there is no page at {request.path[:200]}"
            return _html_error(request, exc.status, code, message)
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
        if _html_wanted(request):
            return _html_error(
                request,
                503,
                "redis_unavailable",
                f"Redis is unreachable ({type(exc).__name__}); nothing was changed. This page "
                "works again once Redis answers.",
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
async def doors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without API keys (loopback only) anything on this machine is let in, web pages in its
    browsers included: answer only a loopback Host (a page whose name was pointed at 127.0.0.1,
    DNS rebinding, sends its own), and take a change only from our own pages or a client that
    says it is one (``Origin`` of this host, or ``Sec-Fetch-Site: same-origin``/``none``)."""
    if ctx_of(request).keys.ring().enabled:
        return await handler(request)
    if not loopback_host(request.headers.get("Host")):
        raise ApiError(
            "host_not_allowed",
            "this server has no API key: it answers Host localhost, 127.0.0.1 or [::1] only",
        )
    if request.method not in SAFE_METHODS and not _same_origin(request):
        raise ApiError(
            "csrf_failed",
            "a change must come from this server's own pages: send Origin: "
            f"http://{request.host} (or set API_KEYS)",
        )
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    return same_origin(
        request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), request.host
    )


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    if route is None or route.auth == "none":
        return await handler(request)
    ctx = ctx_of(request)
    ring = ctx.keys.ring()
    session = request.cookies.get(console.SESSION_COOKIE)
    csrf = request.headers.get("X-CSRF-Token")

    def judge(token: str | None) -> Any:
        return authorize(
            ring,
            method=request.method,
            authorization=request.headers.get("Authorization"),
            session=session,
            csrf=token,
            now=time.time(),
            enqueue=route.name == "enqueue",
        )

    # Credentials first: nothing of the body is read for a request that has none.
    verdict = judge(csrf)
    if (
        verdict.code == "csrf_failed"
        and csrf is None
        and request.method == "POST"
        and request.content_type in FORM_TYPES
    ):
        # A valid session on a console form: its token is a field of the form.
        form = await console.read_form(request)
        value = form.get("csrf")
        verdict = judge(value if isinstance(value, str) else None)
    if verdict.allowed and verdict.via == "session":
        if not await ctx.sessions.alive(session_nonce(session or "")):
            verdict = type(verdict)(False, 401, "unauthorized", "the session has ended")
        elif request.method not in SAFE_METHODS and not _same_origin(request):
            verdict = type(verdict)(
                False, 403, "csrf_failed", "a change from another site is refused", verdict.key
            )
    request[AUTH] = verdict
    request[AUTH_VIA] = verdict.via
    if not verdict.allowed:
        if verdict.status == 401 and _html_wanted(request) and request.method == "GET":
            raise web.HTTPSeeOther("/login")
        raise ApiError(verdict.code, verdict.message)
    return await handler(request)


async def _sampler(ctx: WebContext) -> None:
    """The deployment's gauges, every SAMPLE_SECONDS (the console reads the last round too)."""

    async def round_() -> None:
        try:
            now = await ctx.admin.now()
            ctx.sample = await metrics.sample(ctx.admin, now, overdue_after=ctx.stuck_after)
            ctx.sampled_at = now
            EVENT_STREAMS.set(ctx.streams)
        except Exception:
            metrics.SAMPLE_FAILURES.inc()
            raise

    await every(
        "metrics sampler", metrics.SAMPLE_SECONDS, round_, logger=log, level=logging.WARNING
    )


def build_app(
    settings: Settings,
    *,
    keys: KeySource | None = None,
    redis: Redis | None = None,
    sample: bool = True,
) -> web.Application:
    """The application; its Redis clients are opened here and closed on cleanup."""
    app = web.Application(
        middlewares=[request_id_mw, errors_mw, headers_mw, doors_mw, auth_mw],
        client_max_size=settings.api_max_body_bytes,
    )
    own = redis is None
    # Bounded pools: the ordinary requests and the long polls (whose blocking reads each hold
    # one), and the event streams; serve never holds more than their caps.
    main = (
        redis
        if redis is not None
        else open_redis(
            settings,
            worker=True,
            max_connections=settings.api_redis_max_connections + settings.api_max_long_polls,
        )
    )
    streams = open_redis(settings, max_connections=settings.api_max_event_streams + 1)
    admin = AdminStore.from_settings(main, settings)
    ctx = WebContext(
        settings=settings,
        redis=main,
        stream_redis=streams,
        client=PollerClient.from_settings(settings, main),
        admin=admin,
        keys=keys or KeySource.from_settings(settings),
        templates=console.templates(),
        sessions=SessionStore(main, admin.keys),
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
    runner = make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, backlog=LISTEN_BACKLOG)
    metrics_server = None
    guard: asyncio.Task[None] | None = None
    try:
        await site.start()
        assert runner.server is not None
        cap = connection_cap(settings.api_max_connections)
        guard = asyncio.create_task(guard_connections(runner.server, app[CTX], cap))
        if settings.serve_metrics() > 0:
            metrics_server = metrics.start_server(
                settings.serve_metrics(), settings.metrics_host, registry=metrics.SERVE_REGISTRY
            )
        addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple)]
        log.info(
            "api listening on %s",
            ", ".join(addresses),
            extra={
                "auth": "api keys" if keys.ring().enabled else "none (loopback only)",
                "key_prefix": settings.key_prefix,
                "max_event_streams": settings.api_max_event_streams,
                "max_connections": cap,
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
        if guard is not None:
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard
        await runner.cleanup()
        await metrics.stop_server(metrics_server)
        log.info("api stopped")


# Pending connections the kernel queues for accept (aiohttp's default is 128).
LISTEN_BACKLOG = 1024
# How often the connection guard counts (it closes idle connections beyond the cap).
GUARD_SECONDS = 0.1
# File descriptors kept for Redis, the metrics server, logs and files beyond client connections.
RESERVED_FDS = 128


def make_runner(app: web.Application, settings: Settings, **more: Any) -> web.AppRunner:
    """The runner with serve's connection timeouts: aiohttp's keep-alive timer also runs from
    the moment a connection is accepted, so a client that has not sent a whole request within
    API_IDLE_TIMEOUT_SECONDS (half-sent headers, or nothing), or stays idle that long between
    requests, is disconnected (aiohttp's default is an hour)."""
    return web.AppRunner(
        app,
        access_log_class=AccessLogger,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        keepalive_timeout=settings.api_idle_timeout_seconds,
        **more,
    )


def connection_cap(wanted: int) -> int:
    """API_MAX_CONNECTIONS, within what this process may open: the soft limit of open files is
    raised to the hard one, and the cap kept RESERVED_FDS below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    room = soft - RESERVED_FDS if soft != resource.RLIM_INFINITY else wanted
    if room < wanted:
        log.warning(
            "API_MAX_CONNECTIONS lowered to fit the open files limit",
            extra={"wanted": wanted, "cap": max(16, room), "nofile": soft},
        )
    return max(16, min(wanted, room))


async def guard_connections(server: web.Server, ctx: WebContext, cap: int) -> None:
    """Beyond ``cap`` open connections, close the idle ones (no request under way), oldest
    first: idle and half-sent connections cannot use up the file descriptors and shut out a key
    holder, whose request, once sent, is under way and kept."""
    while True:
        await asyncio.sleep(GUARD_SECONDS)
        conns = server.connections
        excess = len(conns) - cap
        if excess <= 0:
            continue
        closed = 0
        for handler in conns:  # in the order they were accepted
            transport = handler.transport
            if transport is None or transport in ctx.busy:
                continue
            transport.abort()
            closed += 1
            if closed >= excess:
                break
        IDLE_CLOSED.inc(closed)


def serve(settings: Settings, keys: KeySource) -> None:
    """``threads-poller serve``: until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, keys, stop)

    asyncio.run(main())
