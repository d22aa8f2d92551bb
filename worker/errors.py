"""Failures that are the service's own rather than the API's; they share the ThreadsError shape
so results and logs treat every failure alike."""

from __future__ import annotations

from api_client.errors import ThreadsError


class PollerError(ThreadsError):
    pass


class LostJobError(PollerError):
    """The container's check job vanished from Redis before the poll finished."""
