"""Auto-publish: what a ``threads_publish`` (Instagram: ``media_publish``) answer means. Pure;
the job does the I/O.

The rule that matters: a publish that may have happened is never repeated. Only an answer that
proves nothing was published (a Graph error envelope with a 4xx status other than code 10, or a
connection that was never opened) lets a later attempt go ahead; anything ambiguous (timeout, 5xx,
code 10, a reply without a media id) is "unconfirmed", and the worker goes back to checking the
container's status until it sees PUBLISHED or the window ends (then PUBLISH_UNCONFIRMED).
"""

from __future__ import annotations

from enum import StrEnum

from api_client.errors import GraphAPIError, NetworkError, ThreadsError
from api_client.policy import ErrorKind, classify

NOT_READY_CODE, NOT_READY_SUBCODE = 24, 4279009
# Instagram's 9/2207042 ("maximum number of posts"); undocumented for Threads, where the
# simulator answers it for an exhausted post quota too.
QUOTA_EXHAUSTED_SUBCODE = 2207042
# Instagram's -2/2207020: "The media you are trying to access has expired" - the container
# is EXPIRED and certainly not published; only a new container can be.
EXPIRED_SUBCODE = 2207020


class PublishVerdict(StrEnum):
    PUBLISHED = "published"
    UNCONFIRMED = "unconfirmed"  # may have been published: never publish again
    NOT_READY = "not_ready"  # 24/4279009: certainly not published; try again after the grace
    RETRY_LATER = "retry_later"  # certainly not published (a transient error, no connection)
    # Certainly not published, and the account is over its rate limit: one throttling episode
    # (the account pauses), and no publish attempt spent.
    THROTTLED = "throttled"
    QUOTA_EXHAUSTED = "quota_exhausted"
    # Certainly not published: the container expired (2207020); a new one is needed.
    EXPIRED = "expired"
    FAILED = "failed"  # certainly not published, and retrying will not help


class PublishStatus(StrEnum):
    """The ``publish_status`` field of the result hash."""

    PENDING = "pending"  # FINISHED seen; publish due after the grace
    IN_FLIGHT = "in_flight"  # a worker claimed the publish call
    PUBLISHED = "published"
    UNCONFIRMED = "unconfirmed"
    QUOTA_EXHAUSTED = "quota_exhausted"
    FAILED = "failed"
    NEEDS_RECREATE = "needs_recreate"  # 24/4279009 on every attempt: a new container is needed


# Code 10 at threads_publish has come back for posts that did go out (threads-api.md,
# "observed in the wild"): at publish it proves nothing, unlike on a status call.
AMBIGUOUS_PUBLISH_CODES = frozenset({10})


def judge_publish(outcome: str | ThreadsError) -> PublishVerdict:
    if isinstance(outcome, str):
        return PublishVerdict.PUBLISHED
    if isinstance(outcome, NetworkError) and not outcome.request_sent:
        return PublishVerdict.RETRY_LATER
    if not isinstance(outcome, GraphAPIError):
        # Timeouts, dropped connections, garbage or id-less replies: it may have gone through.
        return PublishVerdict.UNCONFIRMED
    if outcome.http_status is None or outcome.http_status >= 500:
        return PublishVerdict.UNCONFIRMED
    if outcome.code in AMBIGUOUS_PUBLISH_CODES:
        return PublishVerdict.UNCONFIRMED
    if outcome.code == NOT_READY_CODE and outcome.subcode == NOT_READY_SUBCODE:
        return PublishVerdict.NOT_READY
    if outcome.subcode == QUOTA_EXHAUSTED_SUBCODE:
        return PublishVerdict.QUOTA_EXHAUSTED
    if outcome.subcode == EXPIRED_SUBCODE:
        return PublishVerdict.EXPIRED
    kind = classify(outcome)
    if kind is ErrorKind.THROTTLED:
        return PublishVerdict.THROTTLED
    if kind is ErrorKind.TRANSIENT:
        return PublishVerdict.RETRY_LATER
    return PublishVerdict.FAILED
