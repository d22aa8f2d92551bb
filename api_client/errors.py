"""The exception hierarchy of the client, in the manner of httpx.

    ThreadsError
    ├── TransportError          no usable HTTP answer
    │   ├── NetworkError        connection refused/reset/dropped, DNS, TLS
    │   └── RequestTimeoutError the per-request timeout elapsed
    ├── MissingTokenError       no token for the account: nothing was sent
    ├── MalformedResponseError  an HTTP answer that is not the Graph wire format
    └── GraphAPIError           a Graph error envelope: code, subcode, type, fbtrace_id...

Every message is redacted before it is stored, so ``str(exc)`` is always safe to log.
Whether an error is transient, throttling or fatal is decided in one place: ``policy.classify``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api_client.usage import ApiUsage


# Graph code 100 for a field the object does not have, e.g. "Tried accessing nonexisting field
# (status)"; sometimes prefixed "(#100) " or followed by " on node type (...)".
_NONEXISTING_FIELD = re.compile(r"Tried accessing nonexisting field \(([^()]*)\)", re.IGNORECASE)


class ThreadsError(Exception):
    """Base class: anything that went wrong talking to the Threads Graph API."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        # Usage headers that came with the failed answer, if any (throttling decisions use them).
        self.usage: ApiUsage | None = None
        # The platform whose API answered (set by the client that raised it): what a code
        # means can differ (api_client.platforms, api_client.policy.classify).
        self.platform = "threads"

    def to_fields(self) -> dict[str, str]:
        """Flat, token-free description for the result hash and for logs."""
        return {
            "error_type": type(self).__name__,
            "message": self.message,
            "http_status": "" if self.http_status is None else str(self.http_status),
        }


class TransportError(ThreadsError):
    """The request got no usable HTTP answer."""


class NetworkError(TransportError):
    def __init__(
        self, message: str, *, http_status: int | None = None, request_sent: bool = True
    ) -> None:
        super().__init__(message, http_status=http_status)
        # False only when the connection could not even be opened: then a POST certainly did
        # nothing, and publishing may be retried. Anything else is ambiguous.
        self.request_sent = request_sent


class RequestTimeoutError(TransportError):
    pass


class MissingTokenError(ThreadsError):
    """No access token is available for the account; no request was made."""


class MalformedResponseError(ThreadsError):
    """An answer that is not the wire format we know: non-JSON, wrong shape, an HTML error page."""


class GraphAPIError(ThreadsError):
    """The API answered with a Graph error envelope ``{"error": {...}}``."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None,
        subcode: int | None = None,
        error_type: str | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool = False,
        user_title: str | None = None,
        user_msg: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.code = code
        self.subcode = subcode
        self.error_type = error_type
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.user_title = user_title
        self.user_msg = user_msg

    @property
    def nonexisting_field(self) -> str | None:
        """The field named by code 100 "Tried accessing nonexisting field (NAME)", else None."""
        if self.code != 100:
            return None
        match = _NONEXISTING_FIELD.search(self.message)
        return match.group(1).strip() if match else None

    def __str__(self) -> str:
        sub = f"/{self.subcode}" if self.subcode is not None else ""
        trace = f", fbtrace_id={self.fbtrace_id}" if self.fbtrace_id else ""
        http = f", HTTP {self.http_status}" if self.http_status is not None else ""
        return f"Graph API error {self.code}{sub} ({self.error_type}{http}): {self.message}{trace}"

    def to_fields(self) -> dict[str, str]:
        fields = super().to_fields()
        fields.update(
            code="" if self.code is None else str(self.code),
            subcode="" if self.subcode is None else str(self.subcode),
            graph_type=self.error_type or "",
            fbtrace_id=self.fbtrace_id or "",
        )
        return fields

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor: teach pickle (arq results, multiprocessing) to rebuild it.
        return (_rebuild_graph_error, (self.message, self.__dict__.copy()))


def _rebuild_graph_error(message: str, state: dict[str, Any]) -> GraphAPIError:
    err = GraphAPIError(message, code=state.get("code"))
    err.__dict__.update(state)
    return err
