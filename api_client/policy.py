"""The error policy: one table from a Graph API failure to what the service does about it.

- TRANSIENT: network error, timeout, HTTP 5xx, unparseable body, code 1 or 2,
  ``is_transient: true`` -> retry at the next scheduled check.
- THROTTLED: code 4, 17, 32, 341, 613, and the platform's own (Instagram's business-use-case
  80001-80008: ``api_client.platforms``); HTTP 429 -> back off, retry later.
- TOKEN: code 102 or 190 (any subcode), or no token configured -> FAILED: the token must be
  replaced.
- PERMISSION: code 3, 10, 200-299 -> FAILED: the app or token lacks a permission.
- RESTRICTED: a code that reads as throttling but, on its platform, is a restriction that
  waiting does not lift (Instagram 4/2207051, spam) -> FAILED.
- NOT_FOUND: code 100 with subcode 33 -> FAILED: wrong id, or no access to it.
- INVALID_REQUEST: code 100 without subcode 33 -> FAILED: our request is wrong.
- UNKNOWN: anything else -> retry at the next scheduled check.

Classification is by ``error.code`` first (Meta's messages change and HTTP statuses vary: an
invalid token has been seen as HTTP 500), then by HTTP status.
"""

from __future__ import annotations

from enum import StrEnum

from api_client.errors import (
    GraphAPIError,
    MalformedResponseError,
    MissingTokenError,
    ThreadsError,
    TransportError,
)
from api_client.platforms import platform_or_default


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    TOKEN = "token"  # noqa: S105 - a category name, not a secret
    PERMISSION = "permission"
    RESTRICTED = "restricted"
    NOT_FOUND = "not_found"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN = "unknown"

    @property
    def is_fatal(self) -> bool:
        """The container cannot be checked with this token; asking again will not help."""
        return self in _FATAL


_FATAL = frozenset(
    {
        ErrorKind.TOKEN,
        ErrorKind.PERMISSION,
        ErrorKind.RESTRICTED,
        ErrorKind.NOT_FOUND,
        ErrorKind.INVALID_REQUEST,
    }
)
THROTTLING_CODES = frozenset({4, 17, 32, 341, 613})
TOKEN_CODES = frozenset({102, 190})
TRANSIENT_CODES = frozenset({1, 2})
NOT_FOUND_SUBCODE = 33


def classify(error: ThreadsError) -> ErrorKind:
    if isinstance(error, MissingTokenError):
        return ErrorKind.TOKEN
    if isinstance(error, TransportError | MalformedResponseError):
        return ErrorKind.THROTTLED if error.http_status == 429 else ErrorKind.TRANSIENT
    if isinstance(error, GraphAPIError):
        code = error.code
        platform = platform_or_default(error.platform)
        if code is not None and (code, error.subcode) in platform.not_throttling:
            return ErrorKind.RESTRICTED
        if code in THROTTLING_CODES or code in platform.throttling_codes:
            return ErrorKind.THROTTLED
        if error.http_status == 429:
            return ErrorKind.THROTTLED
        if code in TOKEN_CODES:
            return ErrorKind.TOKEN
        if code in TRANSIENT_CODES or error.is_transient:
            return ErrorKind.TRANSIENT
        if code == 3 or code == 10 or (code is not None and 200 <= code <= 299):
            return ErrorKind.PERMISSION
        if code == 100:
            if error.subcode == NOT_FOUND_SUBCODE:
                return ErrorKind.NOT_FOUND
            return ErrorKind.INVALID_REQUEST
        if error.http_status is not None and error.http_status >= 500:
            return ErrorKind.TRANSIENT
    return ErrorKind.UNKNOWN
