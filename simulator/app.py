"""The aiohttp application: Threads routes under /v1.0, Instagram's under /v23.0, admin under /_sim.

Handlers are thin: they pull the token and parameters out of the request, ask `SimulatorState`
what to do, then render the answer in the real wire format of the route's platform (Instagram's
rendering is `simulator.instagram`). The token is only ever passed to the state for a lookup; it
never reaches a body, a log line or the call log.

Admin additions for Instagram (the rest of /_sim serves both platforms: scripts, faults, tokens,
refresh, carousels, usage headers, account overrides and the call log):

- ``PUT /_sim/quota/{user_id}`` with ``{"platform": "instagram", "quota_usage": N,
  "quota_total": T}`` (both optional): N is an offset added to the user's Instagram publishes of
  the last 24 h, T the limit (default 100). Without ``platform`` (or ``"threads"``) the body is
  Threads' usage figures, as before; ``quota_total`` is refused there (Threads' totals are fixed).
  ``GET /_sim/quota/{user_id}?platform=instagram`` shows ``{"quota_usage", "quota_total",
  "quota_duration", "offset", "published_24h"}``.
- ``PUT /_sim/publish-faults/{container_id}`` also takes ``ig_daily_limit``, ``ig_spam``,
  ``ig_expired`` and ``buc_throttle`` (refusals: nothing is published), on either route.
- ``buc_throttle`` is a step: ``PUT /_sim/faults {"kinds": ["buc_throttle"], ...}``, a script
  step or an account override.
- ``/_sim/requests`` records carry ``"platform"`` (``"threads"`` or ``"instagram"``);
  ``/_sim/calls`` has ``"by_platform": {"threads": n, "instagram": m}`` (requests of each); a
  container in ``/_sim/calls`` and ``/_sim/calls/{id}`` gains ``"platforms"`` (one per status
  call, beside ``times``) once it has been polled on Instagram's route (a Threads-only
  container's record is unchanged).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from simulator import instagram
from simulator.instagram import INSTAGRAM_API_PREFIX
from simulator.records import (
    PLATFORMS,
    QUOTA_CONFIG_FIELDS,
    QUOTA_DURATION,
    QUOTA_TOTALS,
    REFRESH_EXPIRES_IN,
    ConfigError,
    Platform,
    Published,
    QuotaSnapshot,
    RefreshAnswer,
    Reply,
)
from simulator.state import SimulatorState
from simulator.steps import (
    BUC_THROTTLE,
    OBJECT_ID,
    DropStep,
    GraphErrorStep,
    RawStep,
    StatusStep,
    StepError,
)

API_PREFIX = "/v1.0"
ADMIN_PREFIX = "/_sim"

STATE_KEY = web.AppKey("simulator_state", SimulatorState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


MAX_BODY_BYTES = 1 << 20


class AdminInputError(ValueError):
    """A malformed admin request body."""


# ----- Graph API ---------------------------------------------------------------------------


def _token(request: web.Request, form: dict[str, str] | None = None) -> str | None:
    token = request.query.get("access_token") or (form or {}).get("access_token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # Graph also takes the older "OAuth <token>" scheme; accepting it costs nothing.
    if scheme.lower() in {"bearer", "oauth"} and value.strip():
        return value.strip()
    return None


def _fields(request: web.Request) -> list[str]:
    return [name.strip() for name in request.query.get("fields", "").split(",") if name.strip()]


def _fbtrace_id() -> str:
    # Looks like Meta's ids and is useless to correlate on, which is the point.
    return secrets.token_urlsafe(17)[:23]


def error_envelope(
    step: GraphErrorStep, object_id: str, platform: Platform = "threads"
) -> dict[str, Any]:
    graph_type = instagram.error_type(step.error_type) if platform == "instagram" else None
    error: dict[str, Any] = {
        "message": step.message.replace(OBJECT_ID, object_id),
        "type": graph_type or step.error_type,
        "code": step.code,
    }
    if step.subcode is not None:
        error["error_subcode"] = step.subcode
    error["is_transient"] = step.is_transient
    if step.user_title is not None:
        error["error_user_title"] = step.user_title
    if step.user_msg is not None:
        error["error_user_msg"] = step.user_msg.replace(OBJECT_ID, object_id)
    error["fbtrace_id"] = _fbtrace_id()
    return {"error": error}


def status_body(step: StatusStep, object_id: str, fields: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if "status" in fields:
        body["status"] = step.status
    body["id"] = object_id
    if "error_message" in fields and step.error_message is not None:
        body["error_message"] = step.error_message
    return body


def quota_body(snapshot: QuotaSnapshot, fields: list[str]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for name in fields or ["quota_usage"]:
        if name in QUOTA_TOTALS:
            item[name] = snapshot.usage[name]
        elif name in QUOTA_CONFIG_FIELDS:
            total = QUOTA_TOTALS[QUOTA_CONFIG_FIELDS[name]]
            item[name] = {"quota_total": total, "quota_duration": QUOTA_DURATION}
    return {"data": [item]}


def _drop(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        # abort() rather than close(): nothing buffered may leak out as a partial reply.
        transport.abort()
    # aiohttp finds the transport gone and discards this response quietly.
    return web.Response()


async def _answer(
    request: web.Request,
    reply: Reply,
    *,
    object_id: str,
    fields: list[str],
    platform: Platform = "threads",
) -> web.StreamResponse:
    if reply.delay > 0:
        await asyncio.sleep(reply.delay)
    outcome = reply.outcome
    headers = request.app[STATE_KEY].usage_headers
    if isinstance(outcome, GraphErrorStep) and outcome.label == BUC_THROTTLE.label:
        # Replaces any admin-set value for this reply: the throttle says who is throttled.
        usage = instagram.buc_usage(reply.user_id or object_id, platform)
        headers["X-Business-Use-Case-Usage"] = json.dumps(usage, separators=(",", ":"))
    if isinstance(outcome, DropStep):
        return _drop(request)
    if isinstance(outcome, RawStep):
        headers["Content-Type"] = outcome.content_type
        return web.Response(body=outcome.body.encode(), status=outcome.http_status, headers=headers)
    body: dict[str, Any]
    status = 200
    if isinstance(outcome, GraphErrorStep):
        body, status = error_envelope(outcome, object_id, platform), outcome.http_status
    elif isinstance(outcome, StatusStep) and platform == "instagram":
        body = instagram.container_body(outcome, object_id, fields)
    elif isinstance(outcome, StatusStep):
        body = status_body(outcome, object_id, fields)
    elif isinstance(outcome, QuotaSnapshot) and platform == "instagram":
        total = instagram.IG_QUOTA_TOTAL if outcome.total is None else outcome.total
        body = instagram.quota_body(outcome.usage["quota_usage"], total, fields)
    elif isinstance(outcome, Published):
        body = {"id": outcome.media_id}
    elif isinstance(outcome, RefreshAnswer):
        body = {
            "access_token": outcome.access_token,
            "token_type": outcome.token_type,
            "expires_in": outcome.expires_in,
        }
    else:
        body = quota_body(outcome, fields)
    return web.json_response(body, status=status, headers=headers)


async def container_status(request: web.Request) -> web.StreamResponse:
    container_id = request.match_info["container_id"]
    reply = request.app[STATE_KEY].handle_status(container_id, _token(request))
    return await _answer(request, reply, object_id=container_id, fields=_fields(request))


async def publishing_limit(request: web.Request) -> web.StreamResponse:
    user_id = request.match_info["user_id"]
    reply = request.app[STATE_KEY].handle_quota(user_id, _token(request))
    return await _answer(request, reply, object_id=user_id, fields=_fields(request))


async def refresh_access_token(request: web.Request) -> web.StreamResponse:
    grant_type = request.query.get("grant_type")
    reply = request.app[STATE_KEY].handle_refresh(_token(request), grant_type)
    platform: Platform = "instagram" if grant_type == instagram.IG_REFRESH_GRANT_TYPE else "threads"
    return await _answer(request, reply, object_id="me", fields=[], platform=platform)


async def _publish(request: web.Request, platform: Platform) -> web.StreamResponse:
    user_id = request.match_info["user_id"]
    # Graph takes parameters from the query string or a form body alike.
    form: dict[str, str] = {}
    if request.content_type == "application/x-www-form-urlencoded":
        form = {
            key: value for key, value in (await request.post()).items() if isinstance(value, str)
        }
    creation_id = request.query.get("creation_id") or form.get("creation_id") or None
    reply = request.app[STATE_KEY].handle_publish(
        user_id, creation_id, _token(request, form), platform=platform
    )
    return await _answer(
        request, reply, object_id=creation_id or user_id, fields=[], platform=platform
    )


async def threads_publish(request: web.Request) -> web.StreamResponse:
    return await _publish(request, "threads")


# ----- Instagram ---------------------------------------------------------------------------


async def ig_container_status(request: web.Request) -> web.StreamResponse:
    container_id = request.match_info["container_id"]
    fields = _fields(request)
    unknown = instagram.unknown_container_field(fields)
    refuse = instagram.nonexisting_field(unknown) if unknown is not None else None
    reply = request.app[STATE_KEY].handle_status_for(
        "instagram", container_id, _token(request), refuse=refuse
    )
    return await _answer(
        request, reply, object_id=container_id, fields=fields, platform="instagram"
    )


async def ig_publishing_limit(request: web.Request) -> web.StreamResponse:
    user_id = request.match_info["user_id"]
    reply = request.app[STATE_KEY].handle_quota(user_id, _token(request), platform="instagram")
    return await _answer(
        request, reply, object_id=user_id, fields=_fields(request), platform="instagram"
    )


async def ig_media_publish(request: web.Request) -> web.StreamResponse:
    return await _publish(request, "instagram")


# ----- admin -------------------------------------------------------------------------------


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise AdminInputError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise AdminInputError("the body must be a JSON object")
    return body


def _string_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AdminInputError(f"{key!r} must be a list of strings")
    return value


def _string_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AdminInputError(f"{key!r} must be an object of strings")
    return value


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdminInputError(f"{key!r} must be a number")
    return float(value)


def _integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminInputError(f"{key!r} must be an integer")
    return value


_OK = {"ok": True}


@web.middleware
async def _admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (AdminInputError, ConfigError, StepError) as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def put_script(request: web.Request) -> web.StreamResponse:
    steps = _string_list(await _json_object(request), "steps")
    request.app[STATE_KEY].set_script(request.match_info["key"], steps)
    return web.json_response(_OK)


async def delete_script(request: web.Request) -> web.StreamResponse:
    removed = request.app[STATE_KEY].remove_script(request.match_info["key"])
    return web.json_response({"ok": True, "removed": removed})


async def get_scripts(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    return web.json_response({"rules": state.scripts, "default": state.default_script})


async def put_default_script(request: web.Request) -> web.StreamResponse:
    steps = _string_list(await _json_object(request), "steps")
    request.app[STATE_KEY].set_default_script(steps)
    return web.json_response(_OK)


async def put_faults(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    kinds = _string_list(body, "kinds") if "kinds" in body else None
    state = request.app[STATE_KEY]
    state.set_faults(
        rate=_number(body, "rate"),
        kinds=kinds,
        slow_seconds=_number(body, "slow_seconds"),
        seed=_integer(body, "seed"),
    )
    return web.json_response(state.faults)


async def get_faults(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE_KEY].faults)


def _platform(value: object) -> Platform:
    if value is None or value == "threads":
        return "threads"
    if value == "instagram":
        return "instagram"
    raise AdminInputError(f"'platform' must be one of {list(PLATFORMS)}")


async def put_quota(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    platform = _platform(body.pop("platform", None))
    state = request.app[STATE_KEY]
    user_id = request.match_info["user_id"]
    if platform == "instagram":
        unknown = sorted(set(body) - {"quota_usage", "quota_total"})
        if unknown:
            raise AdminInputError(f"unknown Instagram quota fields {unknown}")
        state.set_ig_quota(
            user_id,
            quota_usage=_integer(body, "quota_usage"),
            quota_total=_integer(body, "quota_total"),
        )
        return web.json_response(state.ig_quota_of(user_id))
    if "quota_total" in body:
        raise AdminInputError("'quota_total' is settable for platform 'instagram' only")
    usage: dict[str, int] = {}
    for key in body:
        value = _integer(body, key)
        if value is not None:
            usage[key] = value
    state.set_quota(user_id, **usage)
    return web.json_response(state.quota_of(user_id))


async def get_quota(request: web.Request) -> web.StreamResponse:
    state, user_id = request.app[STATE_KEY], request.match_info["user_id"]
    if _platform(request.query.get("platform")) == "instagram":
        return web.json_response(state.ig_quota_of(user_id))
    return web.json_response(state.quota_of(user_id))


async def put_publish_fault(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    fault = body.get("fault")
    if fault is not None and not isinstance(fault, str):
        raise AdminInputError("'fault' must be a string or null")
    request.app[STATE_KEY].set_publish_fault(
        request.match_info["container_id"], fault, times=_integer(body, "times")
    )
    return web.json_response(_OK)


async def put_carousel(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    children = _string_list(body, "children") if body.get("children") is not None else None
    state = request.app[STATE_KEY]
    state.set_carousel(request.match_info["parent"], children)
    return web.json_response(state.carousels)


async def put_reply(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    reply_to = body.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise AdminInputError("'reply_to' must be a string or null")
    state = request.app[STATE_KEY]
    state.set_reply(
        request.match_info["container_id"],
        reply_to,
        settle_seconds=_number(body, "settle_seconds") or 0.0,
    )
    return web.json_response(state.replies)


async def put_account_override(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    step = body.get("step")
    if step is not None and not isinstance(step, str):
        raise AdminInputError("'step' must be a string or null")
    state = request.app[STATE_KEY]
    state.set_account_override(request.match_info["account"], step, times=_integer(body, "times"))
    return web.json_response(state.account_overrides)


async def get_account_overrides(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE_KEY].account_overrides)


async def put_usage_headers(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].set_usage_headers(await _json_object(request))
    return web.json_response(_OK)


async def put_tokens(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    valid, expired = _string_map(body, "valid"), _string_map(body, "expired")
    request.app[STATE_KEY].set_tokens(valid=valid, expired=expired)
    # Counts only: tokens are never sent back, not even to the admin.
    return web.json_response({"ok": True, "valid": len(valid), "expired": len(expired)})


async def put_refresh(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request)
    expires_in = _integer(body, "expires_in")
    faults = _string_list(body, "faults") if "faults" in body else []
    request.app[STATE_KEY].set_refresh(
        faults=faults, expires_in=expires_in if expires_in is not None else REFRESH_EXPIRES_IN
    )
    return web.json_response(_OK)


async def get_calls(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE_KEY].calls_summary())


async def get_container_calls(request: web.Request) -> web.StreamResponse:
    calls = request.app[STATE_KEY].calls_for(request.match_info["container_id"])
    return web.json_response(calls.to_json())


async def get_requests(request: web.Request) -> web.StreamResponse:
    records = request.app[STATE_KEY].requests
    return web.json_response([record.to_json() for record in records])


async def post_reset(request: web.Request) -> web.StreamResponse:
    body = await _json_object(request, optional=True)
    rules = body.get("rules", False)
    if not isinstance(rules, bool):
        raise AdminInputError("'rules' must be a boolean")
    request.app[STATE_KEY].reset(rules=rules)
    return web.json_response(_OK)


def build_app(state: SimulatorState) -> web.Application:
    # Bodies: admin JSON and publish forms are small; aiohttp answers 413 past this.
    app = web.Application(middlewares=[_admin_errors], client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    api, admin = API_PREFIX, ADMIN_PREFIX
    app.router.add_get(f"{api}/{{user_id}}/threads_publishing_limit", publishing_limit)
    app.router.add_post(f"{api}/{{user_id}}/threads_publish", threads_publish)
    app.router.add_get(f"{api}/{{container_id}}", container_status)
    ig = INSTAGRAM_API_PREFIX
    app.router.add_get(f"{ig}/{{user_id}}/content_publishing_limit", ig_publishing_limit)
    app.router.add_post(f"{ig}/{{user_id}}/media_publish", ig_media_publish)
    app.router.add_get(f"{ig}/{{container_id}}", ig_container_status)
    # Not versioned, like Meta's (graph.threads.net/ and graph.instagram.com/refresh_access_token).
    app.router.add_get("/refresh_access_token", refresh_access_token)
    app.router.add_put(f"{admin}/refresh", put_refresh)
    app.router.add_get(f"{admin}/scripts", get_scripts)
    app.router.add_put(f"{admin}/scripts/{{key}}", put_script)
    app.router.add_delete(f"{admin}/scripts/{{key}}", delete_script)
    app.router.add_put(f"{admin}/default-script", put_default_script)
    app.router.add_get(f"{admin}/faults", get_faults)
    app.router.add_put(f"{admin}/faults", put_faults)
    app.router.add_get(f"{admin}/quota/{{user_id}}", get_quota)
    app.router.add_put(f"{admin}/quota/{{user_id}}", put_quota)
    app.router.add_put(f"{admin}/publish-faults/{{container_id}}", put_publish_fault)
    app.router.add_put(f"{admin}/carousels/{{parent}}", put_carousel)
    app.router.add_put(f"{admin}/replies/{{container_id}}", put_reply)
    app.router.add_get(f"{admin}/account-overrides", get_account_overrides)
    app.router.add_put(f"{admin}/account-overrides/{{account}}", put_account_override)
    app.router.add_put(f"{admin}/usage-headers", put_usage_headers)
    app.router.add_put(f"{admin}/tokens", put_tokens)
    app.router.add_get(f"{admin}/calls", get_calls)
    app.router.add_get(f"{admin}/calls/{{container_id}}", get_container_calls)
    app.router.add_get(f"{admin}/requests", get_requests)
    app.router.add_post(f"{admin}/reset", post_reset)
    return app
