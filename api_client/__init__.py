"""aiohttp client of the Threads Graph API: typed models, typed errors, redacted messages.

``ThreadsClient`` and ``make_session`` load aiohttp on first use (PEP 562), so code that needs
only the errors, models and policy (``worker.core``, a producer) does not import an HTTP stack.
"""

from typing import TYPE_CHECKING, Any

from api_client.errors import (
    GraphAPIError,
    MalformedResponseError,
    MissingTokenError,
    NetworkError,
    RequestTimeoutError,
    ThreadsError,
    TransportError,
)
from api_client.models import (
    ERROR_EXPLANATIONS,
    ContainerStatus,
    explain_api_error,
    explain_error_message,
)
from api_client.parsing import parse_container_status, parse_graph_error
from api_client.policy import ErrorKind, classify
from api_client.redact import redact

if TYPE_CHECKING:
    from api_client.client import ThreadsClient, make_session


def __getattr__(name: str) -> Any:
    if name in ("ThreadsClient", "make_session"):
        from api_client import client

        return getattr(client, name)
    raise AttributeError(f"module 'api_client' has no attribute {name!r}")


__all__ = [
    "ERROR_EXPLANATIONS",
    "ContainerStatus",
    "ErrorKind",
    "GraphAPIError",
    "MalformedResponseError",
    "MissingTokenError",
    "NetworkError",
    "RequestTimeoutError",
    "ThreadsClient",
    "ThreadsError",
    "TransportError",
    "classify",
    "explain_api_error",
    "explain_error_message",
    "make_session",
    "parse_container_status",
    "parse_graph_error",
    "redact",
]
