"""Signed webhooks on final states.

Each final state of a container with a webhook URL (per enqueue, or ``WEBHOOK_URL``) gets one
delivery job, created atomically with the state. The job POSTs a JSON body and signs it
(``worker.core.signing``), by default per Standard Webhooks:

    webhook-id: <delivery id>          (the same on every attempt and on a replay)
    webhook-timestamp: <unix seconds>  (this attempt's, from Redis' clock)
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>." + raw body)> ...

one signature per secret of WEBHOOK_SECRET (rotation), and with WEBHOOK_SIGNATURE_SCHEME=
threads-poller (or both) the older ``X-Threads-Poller-Signature: t=<t>,v1=<hex>``. A receiver
verifies with the ``standardwebhooks`` library of its language (README "Webhooks"); the older
header with ``verify_signature`` below. Failures (network, timeout, HTTP 408/425/429/5xx) are
retried on ``WEBHOOK_RETRY_SCHEDULE`` (5 s, 5 min, 30 min, 2 h, 5 h, 10 h by default); then, or
at once for any other status, the delivery goes to the dead-letter stream
``{prefix}:webhooks:dead`` with the reason and the body (a replay signs it afresh, same id).

The SSRF guard, at delivery: deliveries go through a session of their own whose resolver
(``GuardedResolver``) refuses a host that resolves to an address the policy does not allow, so
what is checked is what the connection is made to, however DNS changed since the enqueue; an IP
literal never reaches a resolver and is judged from the URL. A refused target is dead-lettered at
once. Redirects are not followed, bodies are not decompressed, and at most
``MAX_RESPONSE_BYTES`` of an answer is read.
"""

from __future__ import annotations

import logging
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from api_client.client import USER_AGENT
from api_client.redact import redact
from worker.core.errors import InvalidIdError
from worker.core.result import PollResult
from worker.core.signing import (
    DEFAULT_TOLERANCE_SECONDS,
    THREADS_POLLER_SIGNATURE_HEADER,
    signature_headers,
    threads_poller_signature,
    verify_threads_poller,
)
from worker.core.targets import (
    WebhookPolicy,
    address_refusal,
    check_target,
    parse_address,
    parse_target,
)
from worker.core.tracing import poll_traceparent
from worker.core.webhooks import (
    EVENT_NAME,
    DeliveryVerdict,
    WebhookStatus,
    body_for,
    judge_delivery,
)
from worker.core.webhooks import WebhookOutcome as Out
from worker.jobs.context import PollerContext
from worker.ops import metrics, tracing
from worker.store.jobdata import DELIVER_FUNCTION
from worker.store.queue import ClaimedJob, persist
from worker.store.results import WebhookAttempt

log = logging.getLogger("threads_poller.webhook")

__all__ = [
    "DELIVER_FUNCTION",
    "EVENT_NAME",
    "GuardedResolver",
    "TargetRefusedError",
    "WebhookJob",
    "body_for",
    "make_webhook_session",
    "sign",
    "verify_signature",
]
# The older scheme's header (WEBHOOK_SIGNATURE_SCHEME=threads-poller or both).
SIGNATURE_HEADER = THREADS_POLLER_SIGNATURE_HEADER
# Sent under every scheme: informative, not signed.
DELIVERY_HEADER = "X-Threads-Poller-Delivery"
EVENT_HEADER = "X-Threads-Poller-Event"
DEAD_LETTERS_MAX_LEN = 100_000
# A receiver's answer is read up to this much (and then dropped): its body is not used.
MAX_RESPONSE_BYTES = 64 * 1024
_SETTLED = frozenset({WebhookStatus.DELIVERED, WebhookStatus.DEAD})


class TargetRefusedError(OSError):
    """The webhook's host resolved to an address the policy refuses; nothing was sent."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, filtered by the webhook policy: the connector connects only to the
    addresses a resolver returns, so refusing here refuses the connection itself.

    ``inner`` is the resolver asked (default: aiohttp's threaded ``getaddrinfo``); tests give
    one that answers what they need. Every address must be allowed, as at enqueue."""

    def __init__(self, policy: WebhookPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        if self.policy.allows_host(host):
            return results
        for result in results:
            try:
                address = parse_address(result["host"])
            except ValueError:
                raise TargetRefusedError(f"{host} resolved to {result['host']!r}") from None
            reason = address_refusal(address, self.policy)
            if reason is not None:
                raise TargetRefusedError(f"{host} resolves to {reason}")
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def make_webhook_session(
    policy: WebhookPolicy, *, max_connections: int = 100, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The deliveries' own session: the guarded resolver, no proxy from the environment, no
    cookies, no decompression (a receiver's body is never used, and a small compressed answer
    can inflate to gigabytes)."""
    connector = aiohttp.TCPConnector(
        limit=max_connections, resolver=GuardedResolver(policy, resolver)
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )


def delivery_refusal(url: str, policy: WebhookPolicy) -> str | None:
    """Why ``url`` may not be delivered to, judged without DNS (an IP literal, the syntax: a URL
    stored before these checks existed gets them too); the resolver does the rest."""
    try:
        target = parse_target(url)
        check_target(target, policy)
    except InvalidIdError as exc:
        return str(exc)
    # aiohttp parses the URL again (yarl): it must see the host this check saw.
    host = (URL(url).raw_host or "").lower().removesuffix(".")
    if host != target.host:
        return f"webhook url refused: its host reads as {host!r} and as {target.host!r}"
    return None


def _refused(exc: BaseException) -> TargetRefusedError | None:
    """The guard's refusal inside aiohttp's connection error, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TargetRefusedError):
            return seen
        if isinstance(seen, aiohttp.ClientConnectorError) and isinstance(
            seen.os_error, TargetRefusedError
        ):
            return seen.os_error
        seen = seen.__cause__
    return None


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The older scheme's header value for one secret (``worker.core.signing``)."""
    return threads_poller_signature([secret], body, timestamp)


def verify_signature(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """For receivers of the older scheme: True if one ``v1`` of ``header`` signs ``body`` with
    ``secret`` and ``t`` is recent enough. (Standard Webhooks: the ``standardwebhooks``
    libraries, or ``worker.core.signing.verify_standard``.)"""
    current = time.time() if now is None else now
    return verify_threads_poller(
        secret, body, header, now=current, tolerance_seconds=tolerance_seconds
    )


class WebhookJob:
    """``deliver_webhook(container_id, generation[, body[, url]])``: one delivery attempt.

    The body is built when the final state is recorded and travels in the job, so a forced
    re-enqueue (a new poll of the same id) does not change or drop what the old poll's
    delivery says. Every outcome is written by one fenced script (``store.settle_webhook``).
    """

    def __init__(self, poller: PollerContext) -> None:
        self.p = poller

    async def __call__(self, job: ClaimedJob) -> None:
        store = self.p.store
        container_id, generation = str(job.args[0]), str(job.args[1])
        current = await store.load(container_id)
        mine = current is not None and current.generation == generation
        # The poll's trace (README "Tracing"): the delivery is a span of it, sent onward.
        poll_trace = current.traceparent if mine and current is not None else None
        tracer = tracing.active()
        if not tracer.enabled:
            await self._attempt(
                job, container_id, generation, current, tracing.NOOP_SPAN, poll_trace
            )
            return
        with tracer.span(
            tracing.WEBHOOK,
            parent=poll_trace or poll_traceparent(container_id, generation),
            kind="client",
            attributes={
                "threads_poller.container_id": container_id,
                "threads_poller.generation": generation,
                "threads_poller.webhook.attempt": job.try_,
            },
        ) as span:
            await self._attempt(job, container_id, generation, current, span, poll_trace)

    async def _attempt(
        self,
        job: ClaimedJob,
        container_id: str,
        generation: str,
        current: PollResult | None,
        span: tracing.Span,
        poll_trace: str | None,
    ) -> None:
        """One attempt: the body, the target (or the end before sending), the signed POST, and
        its verdict settled."""
        body = await self._body(job, container_id, generation, current)
        if body is None:
            return
        url = await self._target(job, container_id, generation, current, body)
        if url is None:
            return
        headers = self._headers(job, body, span, poll_trace)
        if span is not tracing.NOOP_SPAN:
            span.set("threads_poller.webhook.url", tracing.safe_url(url))
        status, failure, refused = await self._post(url, body, headers, span)
        verdict = judge_delivery(
            status,
            attempt=job.try_,
            max_attempts=self.p.settings.webhook_attempts(),
            failure=failure,
            refused=refused,
        )
        await self._conclude(job, container_id, generation, verdict, url, body, span)

    async def _body(
        self, job: ClaimedJob, container_id: str, generation: str, current: PollResult | None
    ) -> bytes | None:
        """The body to send: the job's, else built again; None when there is none (the
        delivery is then dead-lettered, here)."""
        body: bytes | None = job.args[2] if len(job.args) > 2 else None
        if body is not None:
            return body
        # A job re-planned from its id (its data was refused: worker.store.queue): the body is
        # built again from the poll's final state (the same bytes, as body_for is a function of
        # it) while the hash is still that poll's. Else there is nothing to send: dead-lettered
        # with the reason (a dead letter without a body cannot be replayed).
        if current is None or current.generation != generation or not current.final:
            why = "no body to send: the poll's final state is gone (expired or replaced)"
            if job.replanned:
                why = f"{why}; the job's data was refused ({job.replanned[:200]})"
            await self._settle(job, generation, Out.DEAD, job.try_, why, "", b"")
            log.error("webhook dead-lettered: %s", why, extra={"container_id": container_id})
            return None
        return body_for(current, job.job_id)

    async def _target(
        self,
        job: ClaimedJob,
        container_id: str,
        generation: str,
        current: PollResult | None,
        body: bytes,
    ) -> str | None:
        """The URL to POST to; None when the attempt ends before sending: the delivery already
        settled, or dead-lettered here (no URL, no secret, a target the policy refuses)."""
        settings = self.p.settings
        if len(job.args) > 3:
            # The URL the delivery was created for (README "Webhooks": it travels in the job).
            url: str | None = str(job.args[3])
        else:
            # A job without its URL (re-planned from its id, its data refused; or written before
            # URLs travelled with it): the poll's own URL while it is still that poll, else the
            # default.
            url = (
                current.webhook_url
                if current is not None and current.generation == generation
                else None
            ) or settings.webhook_url
        attempt = job.try_
        mine = current is not None and current.generation == generation
        if mine and current is not None and current.webhook_status in _SETTLED:
            # Already delivered or dead-lettered (by a run whose end this run repeats).
            await self.p.deliveries.settle(job, retry_in_ms=None)
            return None
        if not url:
            await self._settle(job, generation, Out.DEAD, attempt, "no webhook URL", "", body)
            return None
        if settings.webhook_secret is None:
            why = "WEBHOOK_SECRET is not set"
            await self._settle(job, generation, Out.DEAD, attempt, why, url, body)
            return None
        refusal = delivery_refusal(url, self.p.webhook_policy)
        if refusal is not None:
            await self._settle(job, generation, Out.DEAD, attempt, refusal, url, body)
            log.error("webhook refused: %s", refusal, extra={"container_id": container_id})
            return None
        return url

    def _headers(
        self, job: ClaimedJob, body: bytes, span: tracing.Span, poll_trace: str | None
    ) -> dict[str, str]:
        """The attempt's headers: the content type, the delivery's id and event, its signatures
        (this attempt's timestamp), and the trace it continues."""
        settings = self.p.settings
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: job.job_id,
            EVENT_HEADER: EVENT_NAME,
            **signature_headers(
                settings.webhook_signature_scheme,
                settings.webhook_signing_secrets(),
                job.job_id,
                int(job.now()),
                body,
            ),
        }
        # W3C Trace Context onward: this attempt's span (tracing on), else the poll's trace as
        # the producer gave it.
        onward = span.traceparent or poll_trace
        if onward:
            headers["traceparent"] = onward
        return headers

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], span: tracing.Span
    ) -> tuple[int | None, str, bool]:
        """The POST: the answer's status (None without one), why it failed ('' if it did not),
        and whether the SSRF guard refused the connection."""
        timeout_s = self.p.settings.webhook_timeout_seconds
        status: int | None = None
        failure, refused = "", False
        try:
            async with self.p.webhook_session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                span.set("http.response.status_code", resp.status)
                status = resp.status
        except TimeoutError:
            failure = f"no answer within {timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            guard = _refused(exc)
            if guard is not None:
                failure, refused = f"webhook url refused: {guard}", True
            else:
                failure = redact(f"{type(exc).__name__}: {exc}")
        return status, failure, refused

    async def _conclude(
        self,
        job: ClaimedJob,
        container_id: str,
        generation: str,
        verdict: DeliveryVerdict,
        url: str,
        body: bytes,
        span: tracing.Span,
    ) -> None:
        """Settle the attempt as its verdict says: delivered, dead-lettered, or retried later."""
        attempt = job.try_
        if verdict.outcome is Out.DELIVERED:
            await self._settle(job, generation, Out.DELIVERED, attempt, "", url, body)
            log.info("webhook delivered", extra={"container_id": container_id, "attempt": attempt})
            return
        span.error("webhook_failed" if verdict.retryable else "webhook_refused")
        if verdict.outcome is Out.DEAD:
            await self._settle(job, generation, Out.DEAD, attempt, verdict.reason, url, body)
            log.error(
                "webhook dead-lettered after %d attempt(s): %s",
                attempt,
                verdict.reason,
                extra={"container_id": container_id},
            )
            return
        delay = self.p.settings.webhook_retry_delay(attempt)
        await self._settle(job, generation, Out.RETRY, attempt, verdict.reason, url, body, delay)
        log.warning(
            "webhook delivery failed, retrying in %.1fs: %s",
            delay,
            verdict.reason,
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
        done = WebhookAttempt(
            generation, outcome, attempt, reason, redact(url), body, delay_s, target=url
        )
        if await persist(
            "settling a webhook delivery", lambda: self.p.store.settle_webhook(job, done)
        ):
            metrics.observe_webhook(outcome)
