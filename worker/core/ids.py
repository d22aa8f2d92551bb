"""Validation of the identifiers producers hand us: refused early, with a clear reason.

(Webhook URLs: ``worker.core.targets``.)
"""

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
