"""The API's contract, ``GET /v1/openapi.json``: written by hand, served as it is. Pure.

tests/integration/test_http_api.py validates every response it gets against the schema given
here for its route and status, and tests/unit/test_web.py holds the document and the
routes of ``worker.web.routes`` together (no route without its operation, nor the reverse).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from config import Settings
from worker.core.durations import MAX_SINCE_SECONDS, format_duration
from worker.core.history import EventKind
from worker.core.states import State
from worker.store.admin import MAX_PAGE, MAX_REASON_LENGTH
from worker.web.errors import CODES
from worker.web.requests import (
    ACCOUNT_CURSOR_PATTERN,
    ACCOUNT_PATTERN,
    ID_PATTERN,
    INFLIGHT_CURSOR_PATTERN,
    LAST_EVENT_ID_PATTERN,
    MAX_TRACEPARENT_HEADER,
    SINCE_PATTERN,
    STATUS_PATTERN,
    STREAM_CURSOR_PATTERN,
    STREAM_ID_PATTERN,
)

VERSION = "1.0.0"

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NSTR = {"type": ["string", "null"]}
_NNUM = {"type": ["number", "null"]}
_NINT = {"type": ["integer", "null"]}
# Every id the server reads with worker.core.ids.validate_id (a pattern applies to strings only:
# null stays allowed where the type allows it).
_ID = {"type": "string", "pattern": ID_PATTERN}
_NID = {"type": ["string", "null"], "pattern": ID_PATTERN}

# The bounds that are settings: the served document gives the server's own (``document()``).
DEFAULT_MAX_WAIT_SECONDS: float = Settings.model_fields["api_max_wait_seconds"].default
DEFAULT_MAX_BATCH: int = Settings.model_fields["api_max_batch"].default


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> Any:
    return {
        "type": "object",
        "properties": props,
        "required": sorted(props) if required is None else required,
        "additionalProperties": extra,
    }


def _page(item: str, **more: Any) -> Any:
    props = {"items": {"type": "array", "items": _ref(item)}, "next_cursor": _NSTR, **more}
    return _obj(props)


RESULT = _obj(
    {
        "container_id": _STR,
        "status": {"type": "string", "description": "see States in the README"},
        "final": _BOOL,
        "error_message": _NSTR,
        "error_explanation": _NSTR,
        "last_api_status": _NSTR,
        "checks": _INT,
        "enqueued_at": _NNUM,
        "deadline_at": _NNUM,
        "last_checked_at": _NNUM,
        "next_check_at": _NNUM,
        "finalized_at": _NNUM,
        "last_error": _NSTR,
        "last_error_kind": _NSTR,
        "last_error_code": _NINT,
        "last_error_subcode": _NINT,
        "last_error_fbtrace_id": _NSTR,
        "throttled": _INT,
        "window_delay": _NUM,
        "last_throttled_at": _NNUM,
        "publish": _BOOL,
        "publish_status": _NSTR,
        "publish_attempts": _INT,
        "media_id": _NSTR,
        "published_at": _NNUM,
        "finished_at": _NNUM,
        "quota_usage": _NINT,
        "quota_total": _NINT,
        "webhook_url": {"type": ["string", "null"], "description": "query values masked"},
        "webhook_status": _NSTR,
        "webhook_attempts": _INT,
        "account": _NSTR,
        "platform": {"type": "string", "enum": ["threads", "instagram"]},
        "error_code": {
            **_NINT,
            "description": "Instagram: the error subcode in error_message's text",
        },
    },
    required=["container_id", "status", "final", "checks", "enqueued_at", "deadline_at"],
    # New result fields may appear (the hash's schema grows); clients ignore what they do not know.
    extra=True,
)

EVENT = _obj(
    {
        "id": {"type": "string", "description": "the events stream id (Last-Event-ID)"},
        "container_id": _STR,
        "status": _STR,
        "failed": _BOOL,
        "error_message": _NSTR,
        "error_explanation": _NSTR,
        "last_error": _NSTR,
        "reason": {"type": ["string", "null"], "description": "what went wrong, readable"},
        "account": _NSTR,
        "checks": _INT,
        "finalized_at": _NNUM,
        "media_id": _NSTR,
        "platform": {"type": "string", "enum": ["threads", "instagram"]},
    }
)

QUOTA = {
    "type": ["object", "null"],
    "properties": {
        "posts_remaining": _NINT,
        "quota_usage": _NINT,
        "quota_total": _NINT,
        "quota_duration": _NINT,
        "fetched_at": _NUM,
    },
    "required": ["posts_remaining", "quota_usage", "quota_total", "quota_duration", "fetched_at"],
    "additionalProperties": False,
}

ACCOUNT = _obj(
    {
        "account": _STR,
        "last_seen_at": _NNUM,
        "throttled": _BOOL,
        "throttled_until": _NNUM,
        "pause_left_s": _NUM,
        "throttled_for_s": _NUM,
        "throttle_level": _INT,
        "throttled_total": _INT,
        "last_throttle_code": _NSTR,
        "last_throttled_at": _NNUM,
        "token_rejected": _BOOL,
        "token_rejected_at": _NNUM,
        "token_rejected_reason": _NSTR,
        "token_rejected_code": _NSTR,
        "token_expires_at": _NNUM,
        "token_expires_in_s": _NNUM,
        "token_issued_at": _NNUM,
        "token_refreshed_at": _NNUM,
        "token_refreshes": _INT,
        "token_refresh_failures": _INT,
        "token_refresh_retry_at": _NNUM,
        "token_refresh_error": _NSTR,
        "quota": QUOTA,
    }
)

WORKER = _obj(
    {
        "name": _STR,
        "host": _STR,
        "pid": _INT,
        "started_at": _NUM,
        "beat_at": _NUM,
        "age_s": _NUM,
        "up_s": _NUM,
        "accepting": _BOOL,
        "running": _INT,
        "slots": _NINT,
        "saturation": _NNUM,
        "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
    }
)

INFLIGHT = _obj(
    {
        "container_id": _STR,
        "deadline_at": _NUM,
        "past_deadline_s": _NUM,
        "status": _NSTR,
        "checks": _NINT,
        "account": _NSTR,
        "enqueued_at": _NNUM,
        "next_check_at": _NNUM,
        "window_delay": _NNUM,
        "last_error": _NSTR,
        "publish_status": _NSTR,
    }
)

DEAD_LETTER = {
    "oneOf": [
        _obj(
            {
                "kind": {"const": "intake"},
                "id": _STR,
                "at": _NUM,
                "reason": _STR,
                "replayable": _BOOL,
                "entry_id": _NSTR,
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        ),
        _obj(
            {
                "kind": {"const": "webhooks"},
                "id": _STR,
                "at": _NUM,
                "reason": _STR,
                "replayable": _BOOL,
                "container_id": _NSTR,
                "status": _NSTR,
                "generation": _NSTR,
                "delivery_id": _NSTR,
                "url": _NSTR,
                "attempts": _NINT,
                "body": {"description": "the signed body that was sent (JSON), or null"},
            }
        ),
    ]
}

OUTCOME = _obj(
    {
        "container_id": _STR,
        "outcome": {"enum": ["enqueued", "restarted", "duplicate", "final", "refused"]},
        "reason": {"type": "string", "description": "why it was refused (a carousel's rules)"},
        "status": _STR,
        "url": _STR,
    },
    required=["container_id", "outcome", "status", "url"],
)

ENQUEUE = {
    "type": "object",
    "description": "one id (container_id) or a batch (container_ids) with shared options",
    "properties": {
        "container_id": _ID,
        "container_ids": {
            "type": "array",
            "items": _ID,
            "minItems": 1,
            "description": "at most API_MAX_BATCH (maxItems: this server's)",
        },
        "platform": {
            "type": ["string", "null"],
            "enum": ["threads", "instagram", None],
            "default": "threads",
            "description": "whose containers these are (Instagram: 2 to 10 children)",
        },
        "account": {
            **_NID,
            "description": "the user id on that platform (an Instagram account is stored as "
            "instagram:<id>)",
        },
        "force": {"type": "boolean", "default": False},
        "publish": {"type": "boolean", "default": False},
        "webhook_url": {"type": ["string", "null"], "format": "uri"},
        "window_seconds": {"type": ["number", "null"], "minimum": 0, "maximum": 86400},
        "reply_to": {
            **_NID,
            "description": "the media id these containers reply to (reply quota, settle time)",
        },
        "children": {
            "type": ["array", "null"],
            "items": _ID,
            "minItems": 2,
            "maxItems": 20,
            "uniqueItems": True,
            "description": "with container_id only: a carousel, this parent's 2 to 20 items "
            "(distinct, the parent not among them)",
        },
    },
    "additionalProperties": False,
    "oneOf": [
        {"required": ["container_id"], "not": {"required": ["container_ids"]}},
        {
            "required": ["container_ids"],
            "not": {"required": ["container_id"]},
            # children (a carousel) go with one container_id only.
            "properties": {"children": {"type": "null"}},
        },
    ],
}

MINUTE = _obj(
    {
        "at": _NUM,
        "checks": _INT,
        "finals": {"type": "object", "additionalProperties": {"type": "integer"}},
        "final_total": _INT,
        "inflight": _NINT,
    }
)

OVERVIEW = _obj(
    {
        "now": _NUM,
        "sampled_at": _NUM,
        "inflight": _INT,
        "past_deadline": _INT,
        "queue": _obj({"jobs": _INT, "due": _INT, "lag_s": _NUM}),
        "webhook_queue": _obj({"jobs": _INT, "due": _INT, "lag_s": _NUM}),
        "dead_letters": _obj({"intake": _INT, "webhooks": _INT}),
        "workers": _obj({"alive": _INT, "accepting": _INT, "saturation": _NUM}),
        "accounts": _obj({"throttled": _INT, "token_rejected": _INT, "longest_throttle_s": _NUM}),
        "minutes": {"type": "array", "items": _ref("Minute")},
    }
)

ERROR = _obj(
    {
        "error": _obj(
            {
                "code": {"enum": sorted(CODES)},
                "message": _STR,
                "status": _INT,
                "details": {"type": "object"},
            },
            required=["code", "message", "status"],
        ),
        "request_id": _STR,
    }
)

# One entry of a container's history (worker.core.history.HistoryEvent): kind and at always,
# the other fields when the kind has them.
HISTORY_EVENT = _obj(
    {
        "kind": {"enum": [k.value for k in EventKind]},
        "at": {"type": "number", "description": "Redis' clock, Unix seconds (ms precision)"},
        "status": {
            "type": "string",
            "description": "check: the API's status ('' when the request failed); final, "
            "cancelled: the poll's; child: the child's final status",
        },
        "latency_ms": _INT,
        "error_kind": _STR,
        "error_code": _INT,
        "error_subcode": _INT,
        "fbtrace_id": _STR,
        "wait_ms": {"type": "integer", "description": "throttled: the pause; paced: the wait"},
        "attempt": _INT,
        "outcome": {
            "type": "string",
            "description": "enqueued: enqueued / restarted; publish: the verdict; webhook: "
            "delivered / retry / dead",
        },
        "media_id": _STR,
        "checks": _INT,
        "detail": {
            "type": "string",
            "description": "webhook, cancelled: the reason; child: the child's id",
        },
        "platform": {
            "type": "string",
            "description": "enqueued: the poll's platform when it is not threads",
        },
    },
    required=["kind", "at"],
)


def _sse(event: str, data: Any, description: str) -> Any:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "event": {"const": event},
            "id": _STR,
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            "retry": _INT,
        },
        "required": ["event", "id", "data"],
    }


# One event of GET /v1/events (OpenAPI 3.1: the text/event-stream schema is one event's).
SSE_EVENT = {
    "oneOf": [
        _sse("final", _ref("Event"), "a final state; id: the events stream id (Last-Event-ID)"),
        _sse(
            "gap",
            _obj({"after": _STR, "oldest": _STR, "reason": _STR}),
            "events after `after` up to `oldest` were trimmed (EVENTS_MAX_LEN) before this "
            "client read them",
        ),
    ]
}

SCHEMAS: dict[str, Any] = {
    "Error": ERROR,
    "Result": RESULT,
    "EnqueueRequest": ENQUEUE,
    "Outcome": OUTCOME,
    "Enqueued": _obj({"outcomes": {"type": "array", "items": _ref("Outcome")}}),
    "Cancelled": _obj(
        {"outcome": {"const": "cancelled"}, "event_id": _STR, "result": _ref("Result")}
    ),
    "CancelRequest": {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": MAX_REASON_LENGTH}},
        "additionalProperties": False,
    },
    "Event": EVENT,
    "HistoryEvent": HISTORY_EVENT,
    "History": _obj(
        {"container_id": _STR, "events": {"type": "array", "items": _ref("HistoryEvent")}}
    ),
    "ServerSentEvent": SSE_EVENT,
    "EventPage": _page("Event", since_s=_NUM),
    "Account": ACCOUNT,
    "AccountPage": _page("Account", total=_INT, now=_NUM),
    "Worker": WORKER,
    "Workers": _obj({"items": {"type": "array", "items": _ref("Worker")}, "now": _NUM}),
    "InflightPoll": INFLIGHT,
    "InflightPage": _page("InflightPoll", total=_INT, past_deadline=_INT, now=_NUM),
    "DeadLetter": DEAD_LETTER,
    "DeadLetterPage": _page("DeadLetter", total=_INT),
    "Replayed": _obj({"outcome": {"const": "replayed"}, "id": _STR, "entry_id": _NSTR}),
    "Discarded": _obj({"outcome": {"const": "discarded"}, "id": _STR}),
    "Minute": MINUTE,
    "Overview": OVERVIEW,
    "Health": _obj({"status": {"const": "ok"}}),
}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(schema)}}


def _resp(description: str, schema: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = _json(schema)
    return out


def _errors(*codes: int) -> dict[str, Any]:
    wanted = {401, 403, 500, 503, *codes}
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in sorted(wanted)}


def _param(name: str, where: str, schema: Any, description: str, **more: Any) -> Any:
    return {"name": name, "in": where, "schema": schema, "description": description, **more}


def _limit(default: int) -> Any:
    schema = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": default}
    return _param("limit", "query", schema, "page size")


def _cursor(pattern: str) -> Any:
    schema = {"type": "string", "pattern": pattern}
    return _param("cursor", "query", schema, "next_cursor of the previous page (empty: the first)")


STREAM_CURSOR = _cursor(STREAM_CURSOR_PATTERN)
SINCE = _param(
    "since",
    "query",
    {"type": "string", "pattern": SINCE_PATTERN, "default": "1h"},
    f"how far back: 90s, 30m, 1h, 2d, 1h30m; longer than {format_duration(MAX_SINCE_SECONDS)} "
    "counts as that (the lists look back no further)",
)
UNTIL = _param(
    "until",
    "query",
    {"type": "string", "pattern": SINCE_PATTERN},
    "only what is at least this old (with since: a time range, e.g. since=2h&until=1h); "
    f"longer than {format_duration(MAX_SINCE_SECONDS)} counts as that",
)
STATUS = _param(
    "status",
    "query",
    {"type": "string", "pattern": STATUS_PATTERN},
    "these final states only, comma-separated (ERROR,EXPIRED)",
)
ACCOUNT = _param(
    "account",
    "query",
    {"type": "string", "pattern": ACCOUNT_PATTERN},
    "this account's only (default: containers enqueued without one)",
)
CID = _param("container_id", "path", _ID, "", required=True)
TRACEPARENT = _param(
    "traceparent",
    "header",
    {"type": "string", "maxLength": MAX_TRACEPARENT_HEADER},
    "the producer's W3C Trace Context, version 00 (00-<32 hex>-<16 hex>-<2 hex>): the polls "
    'join its trace, and their webhooks carry it onward (README "Tracing"). Any other value is '
    "ignored, as Trace Context says: the polls start their own trace; one over "
    f"{MAX_TRACEPARENT_HEADER} characters is refused (422 invalid_traceparent).",
)
KIND = _param("kind", "path", {"enum": ["intake", "webhooks"]}, "which dead letters", required=True)
LETTER = _param(
    "letter_id",
    "path",
    {"type": "string", "pattern": STREAM_ID_PATTERN},
    "the dead letter's id",
    required=True,
)
LAST_EVENT_ID = {"type": "string", "pattern": LAST_EVENT_ID_PATTERN}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[Any] | None = None,
    body: str | None = None,
    write: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": responses,
        "x-role": "write" if write else "read",
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": body == "EnqueueRequest", "content": _json(body)}
    return op


PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "liveness: the server runs and Redis answers (no key needed)",
            "security": [],
            "responses": {
                "200": _resp("ok", "Health"),
                "403": {"$ref": "#/components/responses/E403"},
                "503": {"$ref": "#/components/responses/E503"},
            },
        }
    },
    "/v1/openapi.json": {
        "get": _op("this document", {"200": {"description": "OpenAPI 3.1"}, **_errors()})
    },
    "/v1/containers": {
        "post": _op(
            "enqueue one container id or a batch (the rules of threads-poller enqueue)",
            {
                "202": _resp("one outcome per distinct id, in order", "Enqueued"),
                **_errors(400, 408, 413, 415, 422),
            },
            params=[TRACEPARENT],
            body="EnqueueRequest",
            write=True,
        )
    },
    "/v1/containers/{container_id}": {
        "get": _op(
            "a container's result: 200 final, 202 not final yet; ?wait=S long-polls",
            {
                "200": _resp("final", "Result"),
                "202": _resp("not final yet (after ?wait, when it ran out)", "Result"),
                **_errors(400, 404, 422, 429),
            },
            # ?wait= is added by _document(): its maximum is this server's API_MAX_WAIT_SECONDS.
            params=[CID],
        )
    },
    "/v1/containers/{container_id}/history": {
        "get": _op(
            "a container's history, oldest first: enqueues, checks, throttle pauses, pacing "
            "waits, publish calls and answers, webhook attempts, cancel, final record",
            {"200": _resp("the events", "History"), **_errors(400, 404, 422)},
            params=[CID],
        )
    },
    "/v1/containers/{container_id}/cancel": {
        "post": _op(
            "stop polling: final CANCELLED, one event (and its webhook)",
            {
                "200": _resp("cancelled", "Cancelled"),
                **_errors(400, 404, 408, 409, 413, 415, 422),
            },
            params=[CID],
            body="CancelRequest",
            write=True,
        )
    },
    "/v1/events": {
        "get": _op(
            "final states as Server-Sent Events (event: final, id: the stream id, data: Event); "
            "resumable with Last-Event-ID; 'event: gap' when events were trimmed in between",
            {
                "200": {
                    "description": "text/event-stream",
                    "content": {"text/event-stream": {"schema": _ref("ServerSentEvent")}},
                },
                **_errors(400, 429),
            },
            params=[
                _param(
                    "Last-Event-ID", "header", LAST_EVENT_ID, "resume after this event id; 0: all"
                ),
                _param(
                    "last_event_id", "query", LAST_EVENT_ID, "the same, for clients without headers"
                ),
            ],
        )
    },
    "/v1/finals": {
        "get": _op(
            "final states, newest first",
            {"200": _resp("a page", "EventPage"), **_errors(400)},
            params=[SINCE, UNTIL, STATUS, ACCOUNT, _limit(100), STREAM_CURSOR],
        )
    },
    "/v1/failures": {
        "get": _op(
            "final states that are not FINISHED or PUBLISHED, newest first, with the reason",
            {"200": _resp("a page", "EventPage"), **_errors(400)},
            params=[SINCE, UNTIL, STATUS, ACCOUNT, _limit(100), STREAM_CURSOR],
        )
    },
    "/v1/inflight": {
        "get": _op(
            "containers being polled, by deadline (soonest first)",
            {"200": _resp("a page", "InflightPage"), **_errors(400, 422)},
            params=[ACCOUNT, _limit(50), _cursor(INFLIGHT_CURSOR_PATTERN)],
        )
    },
    "/v1/accounts": {
        "get": _op(
            "accounts: throttling, pause left, cached quota, whether the token was rejected",
            {"200": _resp("a page", "AccountPage"), **_errors(400, 422)},
            params=[_limit(100), _cursor(ACCOUNT_CURSOR_PATTERN)],
        )
    },
    "/v1/workers": {
        "get": _op("live worker processes (heartbeats)", {"200": _resp("", "Workers"), **_errors()})
    },
    "/v1/overview": {
        "get": _op(
            "the console's numbers: counts, and checks and final states per minute (last hour)",
            {"200": _resp("", "Overview"), **_errors()},
        )
    },
    "/v1/dead-letters/{kind}": {
        "get": _op(
            "dead letters, newest first",
            {"200": _resp("a page", "DeadLetterPage"), **_errors(400, 404, 422)},
            params=[KIND, _limit(50), STREAM_CURSOR],
        )
    },
    "/v1/dead-letters/{kind}/{letter_id}/replay": {
        "post": _op(
            "replay: a webhook is delivered again (signed afresh); an intake entry goes back "
            "on the intake stream",
            {"200": _resp("replayed", "Replayed"), **_errors(404, 409, 422)},
            params=[KIND, LETTER],
            write=True,
        )
    },
    "/v1/dead-letters/{kind}/{letter_id}": {
        "delete": _op(
            "discard a dead letter",
            {"200": _resp("discarded", "Discarded"), **_errors(404, 422)},
            params=[KIND, LETTER],
            write=True,
        )
    },
}


def _error_responses() -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code, (status, _) in CODES.items():
        by_status.setdefault(status, []).append(code)
    return {
        f"E{status}": {
            "description": "error: " + ", ".join(sorted(codes)),
            "content": _json("Error"),
        }
        for status, codes in sorted(by_status.items())
    }


def _wait(max_seconds: float) -> Any:
    return _param(
        "wait",
        "query",
        {"type": "number", "minimum": 0, "maximum": max_seconds},
        "seconds to wait for a final state (at most API_MAX_WAIT_SECONDS; 0: answer at once)",
    )


@functools.cache
def _document(max_wait_seconds: float, max_batch: int) -> dict[str, Any]:
    # The two bounds that are settings, written in a copy (PATHS and SCHEMAS stay as written).
    paths = copy.deepcopy(PATHS)
    paths["/v1/containers/{container_id}"]["get"]["parameters"].append(_wait(max_wait_seconds))
    schemas = copy.deepcopy(SCHEMAS)
    schemas["EnqueueRequest"]["properties"]["container_ids"]["maxItems"] = max_batch
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "threads-poller",
            "version": VERSION,
            "description": (
                "Feed Threads media container ids and read their final states. Every error is "
                "{error: {code, message, status}, request_id}; codes are stable. Statuses: "
                + ", ".join(s.value for s in State)
                + "."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API_KEYS (read-write) or API_READ_KEYS (read-only)",
                }
            },
            "schemas": schemas,
            "responses": _error_responses(),
        },
    }


def document(
    *, max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS, max_batch: int = DEFAULT_MAX_BATCH
) -> dict[str, Any]:
    """A copy of the document (callers may not change the cached one), with the bounds of the
    server that serves it (``API_MAX_WAIT_SECONDS``, ``API_MAX_BATCH``; defaults: the settings')."""
    return copy.deepcopy(_document(float(max_wait_seconds), int(max_batch)))
