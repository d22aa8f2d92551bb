"""The states a container can be in, as this service reports them."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    # Reported by the API.
    IN_PROGRESS = "IN_PROGRESS"
    FINISHED = "FINISHED"
    PUBLISHED = "PUBLISHED"
    ERROR = "ERROR"
    EXPIRED = "EXPIRED"
    # Our own.
    QUEUED = "QUEUED"  # enqueued, not checked yet
    TIMED_OUT = "TIMED_OUT"  # the window ended without a final API status
    FAILED = "FAILED"  # the API says this container cannot be checked (id, permission, token)
    # Auto-publish only: FINISHED, but the account's post quota is used up.
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    # Auto-publish only: FINISHED, but the API refused to publish it (reason in last_error).
    PUBLISH_FAILED = "PUBLISH_FAILED"
    # Auto-publish only: FINISHED, yet every publish attempt answered 24/4279009 ("Media Not
    # Found"): this container will not publish; only a new container can.
    NEEDS_RECREATE = "NEEDS_RECREATE"
    # Auto-publish only: the publish answer was ambiguous (timeout, 5xx, code 10, no id) and the
    # container never showed PUBLISHED within the window: it may or may not be live.
    PUBLISH_UNCONFIRMED = "PUBLISH_UNCONFIRMED"
    # Carousels only: a child ended without FINISHED (failed_child names it), so the carousel
    # can never be published; its parent was never polled.
    CHILD_FAILED = "CHILD_FAILED"
    # Stopped by an operator or a pipeline (HTTP API, CLI ``cancel``): no more checks.
    CANCELLED = "CANCELLED"


# EXPIRED and PUBLISHED are final too: other implementations waited forever on them.
API_FINAL_STATES = frozenset({State.FINISHED, State.PUBLISHED, State.ERROR, State.EXPIRED})
FINAL_STATES = API_FINAL_STATES | {
    State.TIMED_OUT,
    State.FAILED,
    State.QUOTA_EXHAUSTED,
    State.PUBLISH_FAILED,
    State.NEEDS_RECREATE,
    State.PUBLISH_UNCONFIRMED,
    State.CHILD_FAILED,
    State.CANCELLED,
}
SUCCESS_STATES = frozenset({State.FINISHED, State.PUBLISHED})


def is_final(status: str) -> bool:
    return status in FINAL_STATES


def is_success(status: str) -> bool:
    return status in SUCCESS_STATES
