"""Every route of ``serve``, in one table. Pure.

``app.build_app`` registers exactly these; tests/unit/test_web.py holds the API rows and
``/v1/openapi.json`` together. ``auth``: ``none`` (no key: liveness, the login page, static
files), ``read`` (any key: GET), ``write`` (a read-write key; a console session also needs its
CSRF token).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    name: str
    auth: str  # none | read | write
    api: bool = True  # part of /v1 (in the OpenAPI document)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", "none"),
    Route("GET", "/v1/openapi.json", "openapi", "read"),
    Route("POST", "/v1/containers", "enqueue", "write"),
    Route("GET", "/v1/containers/{container_id}", "container", "read"),
    Route("GET", "/v1/containers/{container_id}/history", "history", "read"),
    Route("POST", "/v1/containers/{container_id}/cancel", "cancel", "write"),
    Route("GET", "/v1/events", "events", "read"),
    Route("GET", "/v1/finals", "finals", "read"),
    Route("GET", "/v1/failures", "failures", "read"),
    Route("GET", "/v1/inflight", "inflight", "read"),
    Route("GET", "/v1/accounts", "accounts", "read"),
    Route("GET", "/v1/workers", "workers", "read"),
    Route("GET", "/v1/overview", "overview", "read"),
    Route("GET", "/v1/dead-letters/{kind}", "dead_letters", "read"),
    Route("POST", "/v1/dead-letters/{kind}/{letter_id}/replay", "replay", "write"),
    Route("DELETE", "/v1/dead-letters/{kind}/{letter_id}", "discard", "write"),
    # The console (server-rendered HTML; forms post back here).
    Route("GET", "/", "console", "read", api=False),
    Route("GET", "/console/panels", "console_panels", "read", api=False),
    Route("GET", "/containers", "containers_page", "read", api=False),
    Route("GET", "/containers/{container_id}", "container_page", "read", api=False),
    Route("GET", "/search", "search", "read", api=False),
    # Every action: a confirmation (nothing changes), then the action with its reason.
    Route("POST", "/console/confirm", "console_confirm", "write", api=False),
    Route("POST", "/console/act", "console_act", "write", api=False),
    Route("GET", "/login", "login_form", "none", api=False),
    Route("POST", "/login", "login", "none", api=False),
    Route("POST", "/logout", "logout", "none", api=False),
    Route("GET", "/static/{name}", "static", "none", api=False),
)

API_ROUTES = tuple(r for r in ROUTES if r.api)
