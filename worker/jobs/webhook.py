"""Signed webhooks on final states.

Each final state of a container with a webhook URL (per enqueue, or ``WEBHOOK_URL``) gets one
delivery job, created atomically with the state. The job POSTs a JSON body and signs it:

    X-Threads-Poller-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

A receiver recomputes the HMAC over the raw bytes it received, compares in constant time, and
rejects a ``t`` older than a few minutes (replays). ``verify_signature`` below does exactly that.
Failures (network, timeout, HTTP 408/429/5xx) are retried with exponential back-off up to
``WEBHOOK_MAX_ATTEMPTS``; then, or at once for any other status, the delivery goes to the
dead-letter stream ``{prefix}:webhooks:dead`` with the reason and the signed body (so it can be
replayed). Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import aiohttp

from api_client.redact import redact
from worker.core.publishing import WebhookOutcome as Out
from worker.core.publishing import WebhookStatus
from worker.core.webhooks import EVENT_NAME, body_for
from worker.ops import metrics
from worker.store.queue import ClaimedJob, persist
from worker.store.results import DELIVER_FUNCTION, WebhookAttempt

log = logging.getLogger("threads_poller.webhook")

__all__ = ["DELIVER_FUNCTION", "EVENT_NAME", "WebhookJob", "body_for", "sign", "verify_signature"]
SIGNATURE_HEADER = "X-Threads-Poller-Signature"
DELIVERY_HEADER = "X-Threads-Poller-Delivery"
EVENT_HEADER = "X-Threads-Poller-Event"
DEFAULT_TOLERANCE_SECONDS = 300
RETRY_STATUSES = frozenset({408, 425, 429})
DEAD_LETTERS_MAX_LEN = 100_000
# A receiver's answer is read up to this much (and then dropped): its body is not used.
MAX_RESPONSE_BYTES = 64 * 1024
_SETTLED = frozenset({WebhookStatus.DELIVERED, WebhookStatus.DEAD})


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


class WebhookJob:
    """``deliver_webhook(container_id, generation, body)``: one delivery attempt.

    The body is built when the final state is recorded and travels in the job, so a forced
    re-enqueue (a new poll of the same id) does not change or drop what the old poll's
    delivery says. Every outcome is written by one fenced script (``store.settle_webhook``).
    """

    def __init__(self, poller: Any) -> None:
        # worker.jobs.check.PollerContext (typed loosely: jobs imports this module).
        self.p = poller

    async def __call__(self, job: ClaimedJob) -> None:
        settings = self.p.settings
        store = self.p.store
        container_id, generation = str(job.args[0]), str(job.args[1])
        body = job.args[2] if len(job.args) > 2 else None
        current = await store.load(container_id)
        if body is None:
            # A job from before bodies travelled with it: build it from the hash, if still ours.
            if current is None or current.generation != generation or not current.final:
                await self.p.queue.settle(job, retry_in_ms=None)
                return
            body = body_for(current, job.job_id)
        url = (
            current.webhook_url
            if current is not None and current.generation == generation
            else None
        ) or settings.webhook_url
        attempt = job.try_
        mine = current is not None and current.generation == generation
        if mine and current is not None and current.webhook_status in _SETTLED:
            # Already delivered or dead-lettered (by a run whose end this run repeats).
            await self.p.queue.settle(job, retry_in_ms=None)
            return
        if not url:
            await self._settle(job, generation, Out.DEAD, attempt, "no webhook URL", "", body)
            return
        if settings.webhook_secret is None:
            await self._settle(
                job,
                generation,
                Out.DEAD,
                attempt,
                "WEBHOOK_SECRET is not set",
                url,
                body,
            )
            return
        secret = settings.webhook_secret.get_secret_value()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body, int(job.now())),
            DELIVERY_HEADER: job.job_id,
            EVENT_HEADER: EVENT_NAME,
        }
        reason: str | None = None
        retryable = True
        try:
            async with self.p.client_session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds),
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                if 200 <= resp.status < 300:
                    await self._settle(job, generation, Out.DELIVERED, attempt, "", url, body)
                    log.info(
                        "webhook delivered",
                        extra={"container_id": container_id, "attempt": attempt},
                    )
                    return
                reason = f"HTTP {resp.status}"
                retryable = resp.status >= 500 or resp.status in RETRY_STATUSES
        except TimeoutError:
            reason = f"no answer within {settings.webhook_timeout_seconds:g}s"
        except aiohttp.ClientError as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
        if not retryable or attempt >= settings.webhook_max_attempts:
            await self._settle(job, generation, Out.DEAD, attempt, reason or "failed", url, body)
            log.error(
                "webhook dead-lettered after %d attempt(s): %s",
                attempt,
                reason,
                extra={"container_id": container_id},
            )
            return
        delay = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
        await self._settle(job, generation, Out.RETRY, attempt, reason or "", url, body, delay)
        log.warning(
            "webhook delivery failed, retrying in %.1fs: %s",
            delay,
            reason,
            extra={"container_id": container_id, "attempt": attempt},
        )

    async def _settle(
        self,
        job: ClaimedJob,
        generation: str,
        outcome: Out,
        attempt: int,
        reason: str,
        url: str,
        body: bytes,
        delay_s: float = 0.0,
    ) -> None:
        done = WebhookAttempt(generation, outcome, attempt, reason, redact(url), body, delay_s)
        if await persist(
            "settling a webhook delivery", lambda: self.p.store.settle_webhook(job, done)
        ):
            metrics.observe_webhook(outcome)
