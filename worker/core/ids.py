"""Validation of the identifiers producers hand us: refused early, with a clear reason.

(Webhook URLs: ``worker.core.targets``.)
"""

from __future__ import annotations

from collections.abc import Iterable

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


def validate_batch(raws: Iterable[object]) -> list[str]:
    """Every id of one call, validated; at most MAX_BATCH (InvalidIdError beyond, at once)."""
    ids: list[str] = []
    for raw in raws:
        if len(ids) == MAX_BATCH:
            raise InvalidIdError(f"at most {MAX_BATCH} ids per call; split the batch")
        ids.append(validate_id(raw))
    return ids
