"""The service's own errors, under one root, and the typed failure value every result stores.

    PollerError                 the root: anything threads-poller itself refuses or reports
    ├── InvalidIdError          a malformed container / account id or webhook URL (nothing written)
    ├── BadEntryError           an intake stream entry that cannot be used (dead-lettered)
    ├── ScopeError              a producer asked for what its scope does not allow (PRODUCERS)
    ├── WindowEndedError        a poll's window ended without a final status (says why)
    ├── PublishError            auto-publish did not happen (quota, attempts, outcome unknown)
    ├── CarouselChildError      a carousel's child ended without FINISHED (names the child)
    ├── RejectedTokenError      the account's token was already rejected; no request was made
    └── GaveUpError             a check job ran too often without settling

The API client's errors (``api_client.errors.ThreadsError`` and below) stay the client's: they
are not subclassed here to steer policy. What a result says about either kind is one value,
``Failure`` (kind, message, code, subcode, fbtrace_id, HTTP status), built in one place:
``failure_of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from api_client.errors import ThreadsError
from api_client.policy import ErrorKind, classify


class PollerError(Exception):
    """Base for all of threads-poller's own errors."""

    # The ``last_error_kind`` a failure of this class is stored with ("" for none).
    kind: ClassVar[str] = ""


class InvalidIdError(PollerError, ValueError):
    """A container id, account id or webhook URL that cannot be right; nothing was written."""


class BadEntryError(PollerError, ValueError):
    """An intake stream entry that cannot be used; it goes to the dead-letter stream."""


class ScopeError(PollerError):
    """A producer asked for what its scope does not allow: an account outside its list, a flag
    (force, publish, webhook_url) it may not set, or a poll another producer started. (Not a
    PermissionError: that is an OSError, which the doors read as "Redis cannot be reached".)

    ``refused`` names what was not allowed; ``outcomes`` holds every outcome of the call when
    the refusal came from Redis (the ownership rule, checked inside enqueue.lua), so that a
    batch's caller sees what else was done; it is empty when nothing was written."""

    def __init__(
        self,
        message: str,
        *,
        producer: str = "",
        refused: tuple[str, ...] = (),
        outcomes: tuple[object, ...] = (),
    ) -> None:
        super().__init__(message)
        self.producer = producer
        self.refused = refused
        self.outcomes = outcomes


class WindowEndedError(PollerError):
    """The poll's window ended without a final status (the message says how and why)."""


class PublishError(PollerError):
    """Auto-publish did not happen (quota, attempts used up, outcome unknown)."""


class CarouselChildError(PollerError):
    """A carousel's child ended without FINISHED: the carousel cannot be published."""


class RejectedTokenError(PollerError):
    """The account's current token was already rejected by the API; no request was made."""

    kind = ErrorKind.TOKEN.value


class GaveUpError(PollerError):
    """A check job ran more often than any poll needs without settling: its poll was ended."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a check or a poll failed, as a result stores it (``last_error*``). Token-free."""

    kind: str  # an api_client.policy.ErrorKind value, or a PollerError's kind ("" for none)
    message: str
    type: str = ""  # the error's class name (GraphAPIError, WindowEndedError, ...)
    code: int | None = None
    subcode: int | None = None
    fbtrace_id: str | None = None
    http_status: int | None = None

    def __str__(self) -> str:
        return self.message


def failure_of(error: BaseException | Failure | None, kind: str | None = None) -> Failure | None:
    """The one place a failure value is built (``kind`` overrides the policy's reading)."""
    if error is None or isinstance(error, Failure):
        return error
    if isinstance(error, ThreadsError):
        fields = error.to_fields()
        return Failure(
            kind=str(kind or classify(error)),
            message=str(error),
            type=type(error).__name__,
            code=_int(fields.get("code")),
            subcode=_int(fields.get("subcode")),
            fbtrace_id=fields.get("fbtrace_id") or None,
            http_status=error.http_status,
        )
    own = error.kind if isinstance(error, PollerError) else ""
    return Failure(kind=str(kind or own), message=str(error), type=type(error).__name__)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
