"""Every error the HTTP API answers: a status, a stable code and a readable message. Pure.

The body is always ``{"error": {"code": ..., "message": ..., "status": ...}, "request_id": ...}``.
Codes are part of the API (``/v1/openapi.json`` lists them): clients branch on the code, never
on the message.
"""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, what it means)
CODES: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "the body is not valid JSON (UTF-8)"),
    "invalid_parameter": (400, "a query parameter or header has a value the API does not accept"),
    "malformed_body": (400, "the body cannot be read as its Content-Type says (a form, say)"),
    "unauthorized": (401, "no valid API key (Authorization: Bearer <key>) or console session"),
    "forbidden": (403, "the API key is read-only and the request changes something"),
    "csrf_failed": (
        403,
        "a request that changes something comes from another site, or a console request lacks "
        "its CSRF token",
    ),
    "out_of_scope": (
        403,
        "the producer of this API key may not ask for this: an account outside its list, a "
        "flag (force, publish, webhook_url) it may not set, or a poll another producer started",
    ),
    "host_not_allowed": (
        403,
        "without API keys the server answers only Host localhost, 127.0.0.1 or [::1]",
    ),
    "not_found": (404, "no such route"),
    "container_not_found": (404, "the container was never enqueued, or its result expired"),
    "dead_letter_not_found": (404, "no dead letter with that id (replayed, discarded, trimmed)"),
    "method_not_allowed": (405, "the route does not take this method"),
    "already_final": (409, "the container's poll is already final"),
    "publish_in_flight": (409, "a publish call may be under way; try again in a moment"),
    "conflict": (409, "the state changed under the request; read it again"),
    "not_replayable": (409, "this dead letter cannot be replayed as it is"),
    "body_timeout": (408, "the body did not arrive within API_BODY_TIMEOUT_SECONDS"),
    "body_too_large": (413, "the body is larger than API_MAX_BODY_BYTES"),
    "unsupported_media_type": (415, "the body must be application/json"),
    "invalid_body": (422, "the JSON body does not have the documented shape"),
    "unknown_field": (422, "the body has a field the API does not know"),
    "invalid_id": (422, "a container id, account id or webhook URL was refused"),
    "invalid_window": (422, "window_seconds is out of range"),
    "invalid_traceparent": (422, "the traceparent header is too long to be W3C Trace Context"),
    "empty_batch": (422, "container_ids is empty"),
    "batch_too_large": (422, "more container ids than API_MAX_BATCH"),
    "too_many_requests": (429, "this API key holds its most event streams and long polls"),
    "internal_error": (500, "the server failed; the request id is in its log"),
    "redis_unavailable": (503, "Redis cannot be reached; nothing was changed"),
    "too_many_streams": (503, "too many event streams are open; retry later"),
    "too_many_long_polls": (503, "too many long polls (?wait=) are open; retry later"),
    "shutting_down": (503, "the server is stopping"),
}

# An aiohttp HTTPException's status -> our code (routing, body size, methods).
FOR_STATUS = {
    400: "invalid_parameter",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
    500: "internal_error",
    503: "shutting_down",
}


class ApiError(Exception):
    """Raised by a handler; the error middleware answers it as JSON."""

    def __init__(self, code: str, message: str | None = None, **details: Any) -> None:
        status, meaning = CODES[code]
        super().__init__(message or meaning)
        self.code = code
        self.status = status
        self.message = message or meaning
        self.details = details
        # Sent with the answer (Retry-After).
        self.headers: dict[str, str] = {}


def error_body(code: str, message: str, request_id: str, **details: Any) -> dict[str, Any]:
    status = CODES[code][0]
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err, "request_id": request_id}
