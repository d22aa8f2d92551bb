"""Tracing's pure rules: when the OpenTelemetry variables turn traces on, what a W3C
``traceparent`` may look like, and the trace a poll without one belongs to. Pure.

The SDK itself is set up by ``worker.ops.tracing`` (only when ``tracing_wanted`` says so).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

# W3C Trace Context, version 00 only: 2 + 1 + 32 + 1 + 16 + 1 + 2 characters, lower-case hex.
# A later version may carry more fields; none exists, and a value we store must be one we can
# read back exactly, so anything else is refused rather than guessed at.
TRACEPARENT_LENGTH = 55
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# The form ``check_traceparent`` takes, as one pattern (for readers and the unit test that holds
# the two together; the HTTP header is not checked against it: it ignores what it cannot use).
# All-zero ids fit it: W3C says to ignore such a value, and every door does
# (``producer_traceparent``): the poll starts its own trace.
TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class TraceparentError(ValueError):
    """A ``traceparent`` that is not a W3C Trace Context version 00 value."""


class ZeroTraceparentError(TraceparentError):
    """A ``traceparent`` of the right form whose trace or parent id is all zeros: invalid by
    W3C, which says to ignore it (``producer_traceparent``)."""


def check_traceparent(value: object) -> str:
    """``value`` when it is a valid ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``, ids not
    all zeros), else ``TraceparentError`` saying why (the value itself is never echoed: it came
    from outside)."""
    if not isinstance(value, str):
        raise TraceparentError(f"traceparent is a {type(value).__name__}, not text")
    if len(value) != TRACEPARENT_LENGTH:
        raise TraceparentError(
            f"traceparent of {len(value)} characters (a W3C version 00 one has "
            f"{TRACEPARENT_LENGTH}: 00-<32 hex>-<16 hex>-<2 hex>)"
        )
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        raise TraceparentError(
            "traceparent is not W3C Trace Context version 00 (00-<32 hex>-<16 hex>-<2 hex>, "
            "lower-case)"
        )
    if match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        raise ZeroTraceparentError("traceparent has an all-zero trace or parent id")
    return value


def producer_traceparent(value: object) -> str | None:
    """A producer's ``traceparent`` at a door: the value when valid, None when its ids are all
    zeros (W3C: ignored; the poll starts its own trace), ``TraceparentError`` when malformed."""
    try:
        return check_traceparent(value)
    except ZeroTraceparentError:
        return None


def optional_traceparent(value: object) -> str | None:
    """None for a missing or empty value, else ``producer_traceparent(value)``."""
    if value is None or value == "":
        return None
    return producer_traceparent(value)


def trace_id_of(traceparent: str) -> str:
    """The trace id (32 hex) of a valid ``traceparent``."""
    return traceparent[3:35]


def poll_traceparent(container_id: str, generation: str) -> str:
    """The trace of a poll that was given none and made none at enqueue (enqueued where tracing
    was off): derived from the poll itself, so that every worker that checks it joins the same
    trace without a write. Its parent span is the poll, which no process exports."""
    digest = hashlib.sha256(f"{container_id}:{generation}".encode()).hexdigest()
    trace_id, span_id = digest[:32], digest[32:48]
    # Never all zeros (invalid): 2^-128, but cheap to rule out.
    if trace_id == _ZERO_TRACE:
        trace_id = "1".rjust(32, "0")
    if span_id == _ZERO_SPAN:
        span_id = "1".rjust(16, "0")
    return f"00-{trace_id}-{span_id}-01"


_TRUE = "true"
_OFF = "none"


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether the OpenTelemetry SDK's standard variables ask for traces.

    Off unless asked: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    set (not empty), or ``OTEL_TRACES_EXPORTER`` naming an exporter (not ``none``). The SDK's
    own default exporter (``otlp`` to localhost) is not a request: an unset variable turns
    nothing on; ``OTEL_TRACES_EXPORTER=none`` turns it off even with an endpoint set.
    ``OTEL_SDK_DISABLED=true`` (any case) wins over all of them, as the specification says.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == _TRUE:
        return False
    return bool(trace_exporters(env))


def trace_exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (comma separated; ``none`` and empty names
    dropped; ``none`` alone: none at all); ``("otlp",)`` when it is unset and an OTLP endpoint
    is set."""
    raw = env.get("OTEL_TRACES_EXPORTER", "")
    names = tuple(
        dict.fromkeys(
            n.strip().lower() for n in raw.split(",") if n.strip() and n.strip().lower() != _OFF
        )
    )
    if names or raw.strip():
        return names
    if (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    ):
        return ("otlp",)
    return ()
