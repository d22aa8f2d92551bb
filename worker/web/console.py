"""The operator console: server-rendered HTML (Jinja2 templates in the package, everything
escaped), progressive enhancement, no build step, no asset from elsewhere.

``GET /`` renders the whole page; ``GET /console/panels`` the same panels alone, which the page's
script (``static/console.js``) fetches again whenever the event stream (``/v1/events``) brings a
final state, and every few seconds. Without script the page is complete as served, and its forms
(cancel, replay, discard) post to ``/console/...`` and come back to ``/`` with a notice.

A browser logs in once with an API key (``/login``) and then carries a session cookie
(``worker.core.access``): HttpOnly, SameSite=Strict, and every form carries the session's CSRF
token.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from importlib import resources
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from worker.core.access import (
    SESSION_SECONDS,
    Verdict,
    csrf_token,
    issue_session,
    same_origin,
    session_nonce,
    verify_session,
)
from worker.core.durations import format_duration
from worker.ops.health import live_beats
from worker.ops.stats import read_minutes
from worker.store.admin import CancelOutcome, DeadLetterKind, ReplayOutcome
from worker.web.api import cancel_error, fresh_sample, replay_error
from worker.web.chart import chart
from worker.web.context import AUTH, WebContext, ctx_of
from worker.web.errors import CODES, ApiError
from worker.web.requests import parse_container_id, parse_kind, parse_letter_id
from worker.web.views import mask_url

SESSION_COOKIE = "tp_session"
HOUR = 3600.0

NOTICES = {
    "cancelled": "Cancelled: the container is final CANCELLED.",
    "replayed": "Replayed: the dead letter is on its way again.",
    "discarded": "Discarded.",
    "logged_out": "Logged out.",
}


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("worker.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = _ts
    env.filters["secs"] = _secs
    env.filters["mask_url"] = mask_url
    return env


def _ts(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"


def _secs(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value:.1f}s" if value > 0 else "0s"
    return format_duration(value)


def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=headers)


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def csrf_for(request: web.Request) -> str:
    verdict: Verdict | None = request.get(AUTH)
    session = request.cookies.get(SESSION_COOKIE, "")
    if verdict is None or verdict.key is None or verdict.via != "session" or not session:
        return ""
    return csrf_token(verdict.key, session)


async def panels_data(ctx: WebContext) -> dict[str, Any]:
    admin = ctx.admin
    sample = await fresh_sample(ctx)
    now = await admin.now()
    minutes = await read_minutes(ctx.redis, admin.keys, now=now, minutes=60)
    failures = await admin.finals(since_seconds=HOUR, now=now, failed_only=True, limit=50)
    recent = await admin.finals(since_seconds=HOUR, now=now, limit=100)
    successes = [e for e in recent.items if not e.failed][:50]
    inflight = await admin.inflight(limit=25)
    accounts = await admin.accounts(limit=100)
    _, beats = await live_beats(ctx.redis, admin.keys)
    beats.sort(key=lambda b: b.name)
    intake = await admin.dead_letters(DeadLetterKind.INTAKE, limit=20)
    hooks = await admin.dead_letters(DeadLetterKind.WEBHOOKS, limit=20)
    return {
        "now": now,
        "sample": sample,
        "chart": chart(minutes),
        "failures": failures.items,
        "successes": successes,
        "inflight": inflight,
        "stuck_after": ctx.stuck_after,
        "throttled": [a for a in accounts.items if a.throttled(now)],
        "accounts": accounts,
        "workers": beats,
        "intake": intake,
        "hooks": hooks,
    }


async def console_page(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = await panels_data(ctx)
    notice = NOTICES.get(request.query.get("done", ""), "")
    problem = request.query.get("problem", "")
    page = ctx.templates.get_template("console.html").render(
        **data,
        prefix=ctx.admin.keys.prefix,
        csrf=csrf_for(request),
        login=ctx.keys.ring().enabled,
        notice=notice,
        problem=CODES[problem][1] if problem in CODES else "",
    )
    return html(page)


async def console_panels(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = await panels_data(ctx)
    return html(ctx.templates.get_template("panels.html").render(**data, csrf=csrf_for(request)))


# ----- login ------------------------------------------------------------------------------------


def _same_origin(request: web.Request) -> bool:
    """Our own page posted this (a browser says so with Origin or Sec-Fetch-Site)."""
    return same_origin(
        request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), request.host
    )


def _secure(request: web.Request) -> bool:
    """The browser reached us over TLS: directly, or through a proxy we were told to trust
    (TRUSTED_PROXY) that says so in X-Forwarded-Proto."""
    if request.secure:
        return True
    if not ctx_of(request).settings.trusted_proxy:
        return False
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.split(",", 1)[0].strip().lower() == "https"


FORM_ERRORS = (ValueError, AssertionError, UnicodeDecodeError, LookupError)


async def read_form(request: web.Request) -> Any:
    """The form of a POST: within API_BODY_TIMEOUT_SECONDS (408), and 400 when it cannot be
    parsed (a multipart body with a bad boundary, say), never a 500."""
    try:
        async with asyncio.timeout(ctx_of(request).settings.api_body_timeout_seconds):
            return await request.post()
    except TimeoutError:
        raise ApiError("body_timeout") from None
    except web.HTTPException:
        raise  # 413 from aiohttp's own body limit
    except FORM_ERRORS as exc:
        raise ApiError("malformed_body", f"the form cannot be read: {type(exc).__name__}") from None


async def login_form(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    if not ctx.keys.ring().enabled:
        raise web.HTTPSeeOther("/")
    notice = NOTICES.get(request.query.get("done", ""), "")
    return html(ctx.templates.get_template("login.html").render(error="", notice=notice))


async def login(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    ring = ctx.keys.ring()
    if not ring.enabled:
        raise web.HTTPSeeOther("/")
    if not _same_origin(request):
        raise ApiError("csrf_failed", "a login from another site is refused")
    form = await read_form(request)
    given = form.get("key")
    key = ring.match(given) if isinstance(given, str) and given else None
    if key is None:
        page = ctx.templates.get_template("login.html").render(
            error="That key is not one of this server's API keys.", notice=""
        )
        return html(page, status=401)
    nonce = secrets.token_hex(16)
    session = issue_session(key, now=time.time(), nonce=nonce)
    await ctx.sessions.open(nonce, seconds=SESSION_SECONDS)
    resp = web.HTTPSeeOther("/")
    resp.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(SESSION_SECONDS),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    raise resp


async def logout(request: web.Request) -> web.Response:
    if not _same_origin(request):
        raise ApiError("csrf_failed", "a logout from another site is refused")
    ctx = ctx_of(request)
    session = request.cookies.get(SESSION_COOKIE)
    if session and verify_session(ctx.keys.ring(), session, now=time.time()) is not None:
        # Forgotten on the server: this cookie, and any copy of it, is dead from now on.
        await ctx.sessions.close(session_nonce(session))
    resp = web.HTTPSeeOther("/login?done=logged_out")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


# ----- actions ----------------------------------------------------------------------------------


def _done(request: web.Request, code: str, message: str, status: int = 200) -> web.Response:
    if wants_json(request):
        return web.json_response({"outcome": code, "message": message}, status=status)
    if status >= 400:
        raise web.HTTPSeeOther(f"/?problem={code}")
    raise web.HTTPSeeOther(f"/?done={code}")


async def _act(request: web.Request, work: Any) -> web.Response:
    try:
        code, message = await work
    except ApiError as exc:
        return _done(request, exc.code, exc.message, exc.status)
    return _done(request, code, message)


async def console_cancel(request: web.Request) -> web.Response:
    ctx = ctx_of(request)

    async def work() -> tuple[str, str]:
        cid = parse_container_id(request.match_info["container_id"])
        done = await ctx.admin.cancel(cid, reason="from the console")
        if done.outcome is not CancelOutcome.CANCELLED:
            raise cancel_error(cid, done.outcome, done.status)
        return "cancelled", f"{cid} cancelled"

    return await _act(request, work())


async def console_replay(request: web.Request) -> web.Response:
    ctx = ctx_of(request)

    async def work() -> tuple[str, str]:
        kind = parse_kind(request.match_info["kind"])
        letter_id = parse_letter_id(request.match_info["letter_id"])
        done = await ctx.admin.replay(kind, letter_id)
        if done.outcome is not ReplayOutcome.REPLAYED:
            raise replay_error(done.outcome, letter_id)
        return "replayed", f"{kind.value} dead letter {letter_id} replayed"

    return await _act(request, work())


async def console_discard(request: web.Request) -> web.Response:
    ctx = ctx_of(request)

    async def work() -> tuple[str, str]:
        kind = parse_kind(request.match_info["kind"])
        letter_id = parse_letter_id(request.match_info["letter_id"])
        if not await ctx.admin.discard(kind, letter_id):
            raise ApiError("dead_letter_not_found", f"no dead letter {letter_id}")
        return "discarded", f"{kind.value} dead letter {letter_id} discarded"

    return await _act(request, work())


STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise ApiError("not_found")
    body = resources.files("worker.web").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )
