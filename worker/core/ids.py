"""Validation of the identifiers producers hand us: refused early, with a clear reason.

(Webhook URLs: ``worker.core.targets``.)
"""

from __future__ import annotations

from collections.abc import Iterable

from api_client.platforms import DEFAULT_PLATFORM, THREADS, Platform, platform_named
from worker.core.errors import InvalidIdError

MAX_ID_LENGTH = 32  # Graph ids are 64-bit numbers (<= 20 digits); leave room, refuse junk.
# Ids per call (one pipeline, one round trip): far above what a producer batches, far below what
# would hold a Redis connection (and the worker's memory) for seconds.
MAX_BATCH = 10_000


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


# Meta: a carousel has 2 to 20 items on Threads (10 on Instagram: ``Platform.max_children``).
MIN_CHILDREN, MAX_CHILDREN = 2, THREADS.max_children


def validate_platform(raw: object) -> Platform:
    """A poll's platform by name (None or '': Threads); InvalidIdError for another value."""
    if raw is None or raw == "":
        return DEFAULT_PLATFORM
    if not isinstance(raw, str):
        raise InvalidIdError(f"platform must be a string, got {type(raw).__name__}")
    try:
        return platform_named(raw.strip().lower())
    except ValueError as exc:
        raise InvalidIdError(str(exc)) from None


def poll_account(account: object, platform: Platform) -> str | None:
    """The account key a poll is stored under (``Platform.account_key``): a Threads user id as
    it is, an Instagram one as ``instagram:<id>``; no account is None on Threads (the
    deployment's token, as always) and ``instagram`` on Instagram (its own fallback token)."""
    if account is None:
        return platform.account_key("") or None
    return platform.account_key(validate_id(account, what="account id"))


def validate_children(
    raw: object, *, parent: str, max_children: int = MAX_CHILDREN
) -> tuple[str, ...]:
    """A carousel's item container ids: 2 to ``max_children`` (the platform's) distinct ids,
    none of them the parent."""
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple):
        raise InvalidIdError("carousel children must be a list of container ids")
    ids = tuple(validate_id(child, what="carousel child id") for child in raw)
    if not MIN_CHILDREN <= len(ids) <= max_children:
        raise InvalidIdError(
            f"a carousel has {MIN_CHILDREN} to {max_children} children, got {len(ids)}"
        )
    if len(set(ids)) != len(ids):
        raise InvalidIdError("carousel children must be distinct ids")
    if parent in ids:
        raise InvalidIdError(f"carousel child {parent} is the parent itself")
    return ids


def validate_batch(raws: Iterable[object]) -> list[str]:
    """Every id of one call, validated; at most MAX_BATCH (InvalidIdError beyond, at once)."""
    ids: list[str] = []
    for raw in raws:
        if len(ids) == MAX_BATCH:
            raise InvalidIdError(f"at most {MAX_BATCH} ids per call; split the batch")
        ids.append(validate_id(raw))
    return ids
