"""Validation of the identifiers producers hand us: refused early, with a clear reason."""

from __future__ import annotations

from worker.core.errors import InvalidIdError

MAX_ID_LENGTH = 32  # Graph ids are 64-bit numbers (<= 20 digits); leave room, refuse junk.


def validate_id(raw: object, *, what: str = "container id") -> str:
    if not isinstance(raw, str):
        raise InvalidIdError(f"{what} must be a string of digits, got {type(raw).__name__}")
    value = raw.strip()
    if not value:
        raise InvalidIdError(f"{what} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(
            f"{what} is {len(value)} characters long; Threads ids have at most {MAX_ID_LENGTH}"
        )
    if not (value.isascii() and value.isdigit()):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidIdError(f"{what} {shown!r} is not a Threads id (digits only)")
    return value


MAX_URL_LENGTH = 2048


def validate_webhook_url(raw: object) -> str:
    """An absolute http(s) URL with a host; anything else is refused before it is stored."""
    from urllib.parse import urlsplit

    if not isinstance(raw, str) or not raw.strip():
        raise InvalidIdError("webhook url must be a non-empty string")
    value = raw.strip()
    if len(value) > MAX_URL_LENGTH:
        raise InvalidIdError(f"webhook url is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
    ):
        raise InvalidIdError("webhook url must be an absolute http:// or https:// URL")
    return value
