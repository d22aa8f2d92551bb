"""Signed webhooks on final states.

Each final state of a container with a webhook URL (per enqueue, or ``WEBHOOK_URL``) gets one
delivery job, created atomically with the state. The job POSTs a JSON body and signs it:

    X-Threads-Poller-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

A receiver recomputes the HMAC over the raw bytes it received, compares in constant time, and
rejects a ``t`` older than a few minutes (replays). ``verify_signature`` below does exactly that.
Failures (network, timeout, HTTP 408/429/5xx) are retried with exponential back-off up to
``WEBHOOK_MAX_ATTEMPTS``; then, or at once for any other status, the delivery goes to the
dead-letter stream ``{prefix}:webhooks:dead`` with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp
from arq import Retry

from api_client.redact import redact
from worker.store import DELIVER_FUNCTION, PollResult

log = logging.getLogger("threads_poller.webhook")

__all__ = ["DELIVER_FUNCTION", "deliver_webhook", "sign", "verify_signature"]
SIGNATURE_HEADER = "X-Threads-Poller-Signature"
DELIVERY_HEADER = "X-Threads-Poller-Delivery"
EVENT_HEADER = "X-Threads-Poller-Event"
EVENT_NAME = "container.final"
DEFAULT_TOLERANCE_SECONDS = 300
RETRY_STATUSES = frozenset({408, 425, 429})
DEAD_LETTERS_MAX_LEN = 100_000


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """For receivers: True if ``header`` signs ``body`` with ``secret`` and is recent enough."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


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
        "checks": result.checks,
        "enqueued_at": result.enqueued_at,
        "last_checked_at": result.last_checked_at,
        "finalized_at": result.finalized_at,
        "published_at": result.published_at,
    }
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


async def deliver_webhook(ctx: dict[str, Any], container_id: str, generation: str) -> str:
    from worker.jobs import PollerContext

    poller: PollerContext = ctx["poller"]
    settings = poller.settings
    store = poller.store
    result = await store.load(container_id)
    if result is None or result.generation != generation or not result.final:
        return "stale"
    if result.webhook_status in ("delivered", "dead"):
        return result.webhook_status
    url = result.webhook_url or settings.webhook_url
    job_id = ctx.get("job_id", "")
    attempt = result.webhook_attempts + 1
    key = store.keys.result(container_id)
    if not url:
        return "no-url"
    if settings.webhook_secret is None:
        return await _dead(poller, result, url, attempt, "WEBHOOK_SECRET is not set")
    body = body_for(result, job_id)
    secret = settings.webhook_secret.get_secret_value()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        DELIVERY_HEADER: job_id,
        EVENT_HEADER: EVENT_NAME,
    }
    reason: str | None = None
    retryable = True
    try:
        async with poller.client_session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                await store.redis.hset(  # type: ignore[misc]
                    key,
                    mapping={
                        "webhook_status": "delivered",
                        "webhook_attempts": attempt,
                        "webhook_delivered_at": repr(time.time()),
                    },
                )
                log.info("webhook delivered", extra={"container_id": container_id,
                                                     "attempt": attempt})  # fmt: skip
                return "delivered"
            reason = f"HTTP {resp.status}"
            retryable = resp.status >= 500 or resp.status in RETRY_STATUSES
    except TimeoutError:
        reason = f"no answer within {settings.webhook_timeout_seconds:g}s"
    except aiohttp.ClientError as exc:
        reason = redact(f"{type(exc).__name__}: {exc}")
    if not retryable or attempt >= settings.webhook_max_attempts:
        return await _dead(poller, result, url, attempt, reason or "failed")
    await store.redis.hset(  # type: ignore[misc]
        key, mapping={"webhook_attempts": attempt, "webhook_last_error": reason or ""}
    )
    delay = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
    log.warning(
        "webhook delivery failed, retrying in %.1fs: %s", delay, reason,
        extra={"container_id": container_id, "attempt": attempt},
    )  # fmt: skip
    raise Retry(defer=delay)


async def _dead(poller: Any, result: PollResult, url: str, attempt: int, reason: str) -> str:
    store = poller.store
    async with store.redis.pipeline(transaction=True) as tx:
        tx.xadd(
            store.keys.webhook_dead_letters,
            {
                "container_id": result.container_id,
                "status": result.status,
                "url": redact(url),
                "attempts": str(attempt),
                "reason": reason,
                "at": repr(time.time()),
            },
            maxlen=DEAD_LETTERS_MAX_LEN,
            approximate=True,
        )
        tx.hset(
            store.keys.result(result.container_id),
            mapping={"webhook_status": "dead", "webhook_attempts": attempt,
                     "webhook_last_error": reason},
        )  # fmt: skip
        await tx.execute()
    log.error(
        "webhook dead-lettered after %d attempt(s): %s", attempt, reason,
        extra={"container_id": result.container_id},
    )  # fmt: skip
    return "dead"
