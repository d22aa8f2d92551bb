"""The body of a final state's webhook delivery, built from the poll's final view. Pure.

Built where the final state is recorded (the check job, and a cancel from the HTTP API or the
CLI) and carried in the delivery job, so a forced re-enqueue does not change what the old poll's
delivery says. Signing happens at delivery time (``worker.jobs.webhook``).
"""

from __future__ import annotations

import json
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
