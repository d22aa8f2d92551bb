"""aiohttp client of the Threads Graph API: typed models, typed errors, redacted messages."""

from api_client.client import ThreadsClient, make_session
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
