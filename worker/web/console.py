"""The operator console: server-rendered HTML (Jinja2 templates in the package, everything
escaped), progressive enhancement, no build step, no asset from elsewhere.

``GET /`` renders the whole page; ``GET /console/panels`` the same panels alone, which the page's
script (``static/console.js``) fetches again whenever the event stream (``/v1/events``) brings a
final state, and every few seconds. Without script the page is complete as served. Every action
(cancel, poll again, replay, discard; one row or many) is two steps: ``POST /console/confirm``
names what it will touch and asks for a reason, ``POST /console/act`` does it, stores the reason
with the key's name, and shows each row's outcome. There is no one-click action.

A browser logs in once with an API key (``/login``) and then carries a session cookie
(``worker.web.access``): HttpOnly, SameSite=Strict, and every form carries the session's CSRF
token.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from worker.core.durations import format_duration
from worker.core.errors import InvalidIdError, ScopeError
from worker.core.ids import MAX_ID_LENGTH
from worker.ops.health import live_beats
from worker.ops.stats import read_minutes
from worker.store.admin import (
    MAX_PAGE,
    MAX_REASON_LENGTH,
    CancelOutcome,
    DeadLetterKind,
    ReplayOutcome,
)
from worker.store.keys import Keys
from worker.web.access import (
    SESSION_SECONDS,
    Role,
    Verdict,
    csrf_token,
    issue_session,
    same_origin,
    session_nonce,
    verify_session,
)
from worker.web.api import cancel_error, fresh_sample, replay_error
from worker.web.chart import chart
from worker.web.context import AUTH, WebContext, ctx_of
from worker.web.errors import ApiError
from worker.web.pages import (
    ACTIONS,
    BULK_MAX,
    STATUS_CHOICES,
    ListFilter,
    Outcome,
    Target,
    TimelineRow,
    actor_name,
    clean_reason_field,
    failure_reason,
    parse_action,
    parse_filter,
    parse_targets,
    result_fields,
    timeline,
)
from worker.web.requests import parse_container_id, parse_kind
from worker.web.views import mask_url, result_json

SESSION_COOKIE = "tp_session"
DEFAULT_PREFIX = Keys().prefix
HOUR = 3600.0

# What the login page says after ``?done=`` (actions show their outcomes on their own page).
NOTICES = {"logged_out": "Logged out."}


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


def error_page(request: web.Request, *, status: int, code: str, message: str) -> str:
    """An error as a page of the console (the error middleware's answer to a browser)."""
    templates = ctx_of(request).templates
    hints = {
        401: "Log in with an API key to see this page.",
        403: "Your key may not do this (a read-only key, or a form from another page).",
        404: "Search for a container by id, or go back to the overview.",
        503: "Redis did not answer. Try again in a few seconds.",
    }
    return templates.get_template("error.html").render(
        status=status,
        code=code,
        message=message,
        hint=hints.get(status, ""),
        login=ctx_of(request).keys.ring().enabled,
    )


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


def can_write(request: web.Request) -> bool:
    """The session may change things: write controls are rendered for it (and only for it)."""
    verdict: Verdict | None = request.get(AUTH)
    if verdict is None or not verdict.allowed:
        return False
    key = verdict.key
    return key is None or (key.role is Role.WRITE and key.producer is None)


def common(request: web.Request, **more: Any) -> dict[str, Any]:
    """What every page's frame needs (base.html): header, search box, session."""
    ctx = ctx_of(request)
    prefix = ctx.admin.keys.prefix
    data: dict[str, Any] = {
        # The deployment's key prefix, shown when it is not the default (the header used to
        # read "threads-poller threads-poller").
        "prefix": "" if prefix == DEFAULT_PREFIX else prefix,
        "csrf": csrf_for(request),
        "login": ctx.keys.ring().enabled,
        "can_write": can_write(request),
        "q": "",
        "here": request.path,
        "bulk_max": BULK_MAX,
    }
    data.update(more)
    return data


async def console_page(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = await panels_data(ctx)
    page = ctx.templates.get_template("console.html").render(**common(request), **data)
    return html(page)


async def console_panels(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = await panels_data(ctx)
    return html(ctx.templates.get_template("panels.html").render(**common(request), **data))


# ----- containers ------------------------------------------------------------------------------


async def containers_page(request: web.Request) -> web.Response:
    """``/containers``: in flight, or final states, filtered, a page at a time (the API's
    cursors)."""
    ctx = ctx_of(request)
    f = parse_filter(request.query, limit_max=MAX_PAGE)
    rows, next_cursor, total = await list_rows(ctx, f)
    page = ctx.templates.get_template("containers.html").render(
        **common(request),
        f=f,
        rows=rows,
        next_cursor=next_cursor,
        total=total,
        choices=STATUS_CHOICES,
        now=await ctx.admin.now(),
        stuck_after=ctx.stuck_after,
    )
    return html(page)


@dataclass(frozen=True, slots=True)
class Row:
    """One container of a list: from a final event or a poll in flight."""

    container_id: str
    status: str
    account: str
    when: float | None
    reason: str
    checks: int
    live: bool
    failed: bool
    deadline_at: float | None = None


async def list_rows(ctx: WebContext, f: ListFilter) -> tuple[list[Row], str | None, int | None]:
    try:
        if f.inflight:
            page = await ctx.admin.inflight(limit=f.limit, cursor=f.cursor, account=f.account)
            rows = [
                Row(
                    p.container_id,
                    p.result.status if p.result else "(gone)",
                    (p.result.account or "") if p.result else "",
                    p.result.enqueued_at if p.result else None,
                    (p.result.last_error or "") if p.result else "",
                    p.result.checks if p.result else 0,
                    True,
                    False,
                    p.deadline_at,
                )
                for p in page.items
            ]
            return rows, page.next_cursor, page.total
        now = await ctx.admin.now()
        finals = await ctx.admin.finals(
            since_seconds=f.since_seconds,
            now=now,
            failed_only=f.failed_only,
            limit=f.limit,
            cursor=f.cursor,
            statuses=f.statuses,
            account=f.account,
            until_seconds=f.until_seconds,
        )
    except InvalidIdError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None
    rows = [
        Row(
            e.container_id,
            e.status,
            e.account or "",
            e.finalized_at,
            e.reason if e.failed else (f"media {e.media_id}" if e.media_id else ""),
            e.checks,
            False,
            e.failed,
        )
        for e in finals.items
    ]
    return rows, finals.next_cursor, None


async def timeline_rows(ctx: WebContext, container_id: str) -> list[TimelineRow]:
    """The timeline of ``container_id``, oldest first: its history (README, "History")."""
    return timeline(await ctx.client.history(container_id))


async def container_page(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    cid = parse_container_id(request.match_info["container_id"])
    result = await ctx.client.get(cid)
    if result is None:
        raise ApiError("container_not_found", f"container {cid} is unknown (or its result expired)")
    page = ctx.templates.get_template("container.html").render(
        **common(request),
        cid=cid,
        r=result,
        fields=result_fields(result_json(result)),
        reason=failure_reason(result),
        timeline=await timeline_rows(ctx, cid),
        actions=await ctx.admin.actions(target=cid, limit=20),
        now=await ctx.admin.now(),
    )
    return html(page)


async def search(request: web.Request) -> web.Response:
    """``/search?q=``: an exact id with a result goes to its page; otherwise the ids that start
    with it (``AdminStore.find_ids``, bounded)."""
    ctx = ctx_of(request)
    q = "".join(request.query.get("q", "").split())[:MAX_ID_LENGTH]
    found = None
    problem = ""
    if q and not (q.isascii() and q.isdigit()):
        problem = "A container id is digits only."
    elif q:
        if await ctx.client.get(q) is not None:
            raise web.HTTPSeeOther(f"/containers/{q}")
        found = await ctx.admin.find_ids(q)
    page = ctx.templates.get_template("search.html").render(
        **common(request, q=q), found=found, problem=problem
    )
    return html(page, status=400 if problem else 200)


# ----- confirm and act -------------------------------------------------------------------------


async def confirm(request: web.Request) -> web.Response:
    """Step one of every action: what it will touch, by name and count, and a reason to give.
    Nothing is changed here."""
    ctx = ctx_of(request)
    form = await read_form(request)
    one = str(form.get("one", "") or "")
    # "Everything this filter shows" comes as ?scope=filter (the button's formaction).
    scope = form.get("scope") or request.query.get("scope", "")
    # A row's own button ("replay:webhooks:1-0"), or "every dead letter of a kind": replay.
    action = parse_action(
        one.partition(":")[0]
        if one
        else (form.get("action") or ("replay" if scope in ("intake", "webhooks") else None))
    )
    described = ""
    if one:
        targets = parse_targets(action, [one.partition(":")[2]])
    elif scope == "filter":
        f = parse_filter(form, limit_max=BULK_MAX)
        f = ListFilter(f.status, f.account, f.since, f.until, BULK_MAX, f.cursor)
        rows, _, _ = await list_rows(ctx, f)
        targets = parse_targets(action, [r.container_id for r in rows]) if rows else []
        described = f.describe()
    elif scope in ("intake", "webhooks"):
        letters = await ctx.admin.dead_letters(parse_kind(scope), limit=BULK_MAX)
        targets = (
            parse_targets(action, [f"{scope}:{d.id}" for d in letters.items])
            if letters.items
            else []
        )
        described = f"every {scope} dead letter shown"
    else:
        targets = parse_targets(action, form.getall("target", []))
    page = ctx.templates.get_template("confirm.html").render(
        **common(request),
        action=action,
        label=ACTIONS[action],
        targets=targets,
        described=described,
        back=_back(form),
        max_reason=MAX_REASON_LENGTH,
    )
    return html(page)


def _back(form: Any) -> str:
    """Where "back" goes: a page of ours (a path, never another site)."""
    back = str(form.get("back", "") or "/")
    return back if back.startswith("/") and not back.startswith("//") else "/"


async def act(request: web.Request) -> web.Response:
    """Step two: the action on each target, one by one (the per-container operations, each
    atomic), each outcome kept in ``{prefix}:audit`` with the reason and the key's name, and
    shown next to its target."""
    ctx = ctx_of(request)
    form = await read_form(request)
    action = parse_action(form.get("action"))
    targets = parse_targets(action, form.getall("target", []))
    reason = clean_reason_field(form.get("reason"), maximum=MAX_REASON_LENGTH)
    actor = actor_name(request.get(AUTH))
    outcomes: list[Outcome] = []
    for target in targets:
        outcome = await _one(ctx, action, target, reason, actor)
        await ctx.admin.note_action(
            action=action,
            target=target.value,
            reason=reason,
            actor=actor,
            outcome=outcome.code,
        )
        outcomes.append(outcome)
    done = sum(o.ok for o in outcomes)
    if wants_json(request):
        return web.json_response(
            {
                "action": action,
                "done": done,
                "outcomes": [
                    {"target": o.target.value, "ok": o.ok, "outcome": o.code, "message": o.message}
                    for o in outcomes
                ],
            }
        )
    page = ctx.templates.get_template("done.html").render(
        **common(request),
        action=action,
        label=ACTIONS[action],
        outcomes=outcomes,
        done=done,
        reason=reason,
        actor=actor,
        back=_back(form),
    )
    return html(page)


async def _one(ctx: WebContext, action: str, target: Target, reason: str, actor: str) -> Outcome:
    try:
        return await _do(ctx, action, target, reason, actor)
    except ApiError as exc:
        return Outcome(target, False, exc.code, exc.message)


async def _do(ctx: WebContext, action: str, target: Target, reason: str, actor: str) -> Outcome:
    if action == "cancel":
        c = await ctx.admin.cancel(target.id, reason=reason, actor=actor)
        if c.outcome is not CancelOutcome.CANCELLED:
            raise cancel_error(target.id, c.outcome, c.status)
        return Outcome(target, True, "cancelled", "final CANCELLED")
    if action == "poll":
        return await _poll_again(ctx, target)
    kind = parse_kind(target.kind)
    if action == "replay":
        r = await ctx.admin.replay(kind, target.id)
        if r.outcome is not ReplayOutcome.REPLAYED:
            raise replay_error(r.outcome, target.id)
        return Outcome(target, True, "replayed", "on its way again")
    if not await ctx.admin.discard(kind, target.id):
        raise ApiError("dead_letter_not_found", f"no dead letter {target.id}")
    return Outcome(target, True, "discarded", "deleted")


async def _poll_again(ctx: WebContext, target: Target) -> Outcome:
    """A new poll of the id (``force``), with the account and webhook it had; it does not
    publish (a published container is never published twice from here)."""
    current = await ctx.client.get(target.id)
    try:
        outcomes = await ctx.client.enqueue_many(
            [target.id],
            account=current.account if current else None,
            force=True,
            webhook_url=current.webhook_url if current else None,
        )
    except ScopeError as exc:
        return Outcome(target, False, "out_of_scope", str(exc))
    except (InvalidIdError, ValueError) as exc:
        return Outcome(target, False, "invalid_id", str(exc))
    o = outcomes[0]
    return Outcome(target, True, o.outcome, f"{o.outcome}: {o.status}")


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
