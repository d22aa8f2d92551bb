"""Webhook deliveries, the pure part: their vocabulary, the body, and what an attempt leads to.

The body of a final state's delivery is built from the poll's final view where the final state is
recorded (the check job, and a cancel from the HTTP API or the CLI) and carried in the delivery
job, so a forced re-enqueue does not change what the old poll's delivery says. Signing, the
request and the settling happen at delivery time (``worker.jobs.webhook``), which asks
``judge_delivery`` what its attempt's answer means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from worker.core.result import PollResult

EVENT_NAME = "container.final"


def body_for(result: PollResult, delivery_id: str) -> bytes:
    data: dict[str, Any] = {
        "event": EVENT_NAME,
        "delivery_id": delivery_id,
        "container_id": result.container_id,
        "status": result.status,
        "final": result.final,
        "error_message": result.error_message,
        "error_explanation": result.error_explanation,
        "last_error": result.last_error,
        "media_id": result.media_id,
        "account": result.account,
        "platform": result.platform,
        "checks": result.checks,
        "enqueued_at": result.enqueued_at,
        "last_checked_at": result.last_checked_at,
        "finalized_at": result.finalized_at,
        "published_at": result.published_at,
    }
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


class WebhookStatus(StrEnum):
    """The ``webhook_status`` field of the result hash."""

    PENDING = "pending"  # the delivery job exists (created with the final state)
    DELIVERED = "delivered"
    DEAD = "dead"  # failed for good: see {prefix}:webhooks:dead


class WebhookOutcome(StrEnum):
    """What one delivery attempt leads to."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


# Besides 5xx, the statuses that say "later" (timeout, too early, too many requests); any other
# status is the receiver's final no.
RETRY_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class DeliveryVerdict:
    """``judge_delivery``'s answer: the outcome, the reason kept with it ("" when delivered), and
    whether the failure was one a retry could fix (the attempt's span says which)."""

    outcome: WebhookOutcome
    reason: str
    retryable: bool = True


DELIVERED = DeliveryVerdict(WebhookOutcome.DELIVERED, "")


def judge_delivery(
    status: int | None,
    *,
    attempt: int,
    max_attempts: int,
    failure: str = "",
    refused: bool = False,
) -> DeliveryVerdict:
    """What attempt number ``attempt`` (of at most ``max_attempts``) leads to.

    ``status`` is the receiver's HTTP status, or None when there was no answer: then ``failure``
    says why (a timeout, a network error) and ``refused`` is True when the target itself was
    refused (the SSRF guard), which no retry changes. 2xx is delivered; 5xx, 408, 425, 429 and no
    answer are retried until the attempts run out; anything else is dead at once.
    """
    if status is not None and 200 <= status < 300:
        return DELIVERED
    if status is not None:
        reason = f"HTTP {status}"
        retryable = status >= 500 or status in RETRY_STATUSES
    else:
        reason, retryable = failure, not refused
    if not retryable or attempt >= max_attempts:
        return DeliveryVerdict(WebhookOutcome.DEAD, reason or "failed", retryable)
    return DeliveryVerdict(WebhookOutcome.RETRY, reason, retryable)
