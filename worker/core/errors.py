"""Failures that are the service's own rather than the API's; they share the ThreadsError shape
so results and logs treat every failure alike."""

from __future__ import annotations

from api_client.errors import MissingTokenError, ThreadsError


class PollerError(ThreadsError):
    pass


class WindowEndedError(PollerError):
    """The poll's window ended without a final status (the message says how and why)."""


class RejectedTokenError(MissingTokenError):
    """The account's current token was already rejected by the API; no request was made."""


class PublishError(PollerError):
    """Auto-publish did not happen (quota, attempts used up, outcome unknown)."""
