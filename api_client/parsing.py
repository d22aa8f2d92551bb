"""From (HTTP status, body bytes) to a typed value or a typed error. Pure: no I/O, no clock.

Never raises anything but ``ThreadsError`` subclasses, whatever the bytes are (a property test
feeds it arbitrary input).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from api_client.errors import GraphAPIError, MalformedResponseError
from api_client.models import ContainerStatus, PublishingLimit
from api_client.platforms import THREADS, Platform

_MAX_TEXT = 500


def _clip(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"), which cannot be encoded to UTF-8 for Redis.
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


def _decode_json(http_status: int, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        kind = "empty body" if not body.strip() else "a body that is not JSON"
        raise MalformedResponseError(
            f"HTTP {http_status} with {kind}", http_status=http_status
        ) from None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_graph_error(http_status: int, payload: Any) -> GraphAPIError | None:
    """The Graph error envelope ``{"error": {...}}`` as an exception, or None if there is none."""
    if not isinstance(payload, dict) or "error" not in payload:
        return None
    err = payload["error"]
    if not isinstance(err, dict):
        return GraphAPIError(
            _clip(f"error envelope of unexpected shape: {err!r}"),
            code=None,
            http_status=http_status,
        )
    transient = err.get("is_transient")
    return GraphAPIError(
        _clip(_opt_str(err.get("message")) or "no message"),
        code=_opt_int(err.get("code")),
        subcode=_opt_int(err.get("error_subcode")),
        error_type=_clip(kind) if (kind := _opt_str(err.get("type"))) else None,
        fbtrace_id=_clip(fbtrace) if (fbtrace := _opt_str(err.get("fbtrace_id"))) else None,
        is_transient=transient is True or transient == "true",
        user_title=_opt_str(err.get("error_user_title")),
        user_msg=_opt_str(err.get("error_user_msg")),
        http_status=http_status,
    )


def parse_json_object(http_status: int, body: bytes) -> dict[str, Any]:
    """A success body as a JSON object, or the error it carries instead."""
    payload = _decode_json(http_status, body)
    graph_error = parse_graph_error(http_status, payload)
    if graph_error is not None:
        raise graph_error
    if http_status >= 400:
        raise MalformedResponseError(
            f"HTTP {http_status} without a Graph error envelope", http_status=http_status
        )
    if not isinstance(payload, dict):
        raise MalformedResponseError(
            f"HTTP {http_status}: expected a JSON object, got {type(payload).__name__}",
            http_status=http_status,
        )
    return payload


def parse_container_status(
    container_id: str, http_status: int, body: bytes, platform: Platform = THREADS
) -> ContainerStatus:
    """The container's state, read from the platform's fields (Threads: ``status`` and
    ``error_message``; Instagram: ``status_code`` and ``status``, whose error subcode is read
    out of its text)."""
    payload = parse_json_object(http_status, body)
    status = payload.get(platform.status_field)
    if not isinstance(status, str) or not status.strip():
        raise MalformedResponseError(
            _clip(
                f"status body without a usable '{platform.status_field}' field: {sorted(payload)!r}"
            ),
            http_status=http_status,
        )
    reason = payload.get(platform.reason_field)
    if reason is not None and not isinstance(reason, str):
        raise MalformedResponseError(
            f"status body with a non-string '{platform.reason_field}'", http_status=http_status
        )
    state = status.strip()
    reason_text = reason or None
    if platform.reason_field == "status" and state != "ERROR":
        # Instagram's status is a sentence on every state ("In Progress: ..."): a reason only
        # when the container failed.
        reason_text = None
    # Unknown values are kept verbatim; trimming guards against stray whitespace only.
    return ContainerStatus(
        container_id=container_id,
        status=_clip(state),
        error_message=_clip(reason_text) if reason_text else None,
        error_code=platform.reason_code(reason_text),
    )


def parse_publishing_limit(http_status: int, body: bytes) -> PublishingLimit:
    """``{"data": [{...}]}`` to a model; blocks the API left out stay None."""
    payload = parse_json_object(http_status, body)
    data = payload.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise MalformedResponseError(
            "publishing limit body without a data[0] object", http_status=http_status
        )
    try:
        return PublishingLimit.model_validate(data[0])
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise MalformedResponseError(
            _clip(f"publishing limit with unexpected values in: {fields}"),
            http_status=http_status,
        ) from None


def parse_publish(http_status: int, body: bytes) -> str:
    """``{"id": "<media id>"}``; anything else is an error (and, for a publish, ambiguous)."""
    payload = parse_json_object(http_status, body)
    media_id = payload.get("id")
    if isinstance(media_id, int) and not isinstance(media_id, bool):
        media_id = str(media_id)
    if not isinstance(media_id, str) or not media_id.strip():
        raise MalformedResponseError("publish reply without a media id", http_status=http_status)
    return _clip(media_id.strip())
