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


# Meta: a carousel has 2 to 20 items.
MIN_CHILDREN, MAX_CHILDREN = 2, 20


def validate_children(raw: object, *, parent: str) -> tuple[str, ...]:
    """A carousel's item container ids: 2 to 20 distinct ids, none of them the parent."""
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple):
        raise InvalidIdError("carousel children must be a list of container ids")
    ids = tuple(validate_id(child, what="carousel child id") for child in raw)
    if not MIN_CHILDREN <= len(ids) <= MAX_CHILDREN:
        raise InvalidIdError(
            f"a carousel has {MIN_CHILDREN} to {MAX_CHILDREN} children, got {len(ids)}"
        )
    if len(set(ids)) != len(ids):
        raise InvalidIdError("carousel children must be distinct ids")
    if parent in ids:
        raise InvalidIdError(f"carousel child {parent} is the parent itself")
    return ids


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
