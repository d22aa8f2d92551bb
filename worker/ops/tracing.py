"""OpenTelemetry traces (README "Tracing"), opt-in: the one module that imports the SDK.

The rest of the service calls ``active()`` and its two methods, ``span`` (a context manager)
and ``traceparent`` (the current span's W3C header value). Until ``configure()`` found the
SDK's variables asking for traces (``worker.core.tracing.tracing_wanted``) the active tracing
is ``NOOP``: one shared object whose ``span`` returns one shared context manager, so a check
pays an attribute lookup and a call, and ``opentelemetry`` is never imported (the extra
``threads-poller[otel]`` need not be installed).

Spans carry no secret: attributes are chosen here and by the callers (ids, statuses, codes,
timings, a redacted URL), an exception is recorded by its type's name only (its text may hold
a URL with a token), and no span is named after a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from api_client.redact import redact
from worker.core.tracing import trace_exporters, tracing_wanted
from worker.store.results import Enqueued, EnqueueRequest

log = logging.getLogger("threads_poller.tracing")

SERVICE_NAME = "threads-poller"
TRACER_NAME = "threads_poller"

# Span names (fixed: a value never goes into a name).
POLL = "threads_poller.enqueue"
CHECK = "threads_poller.check"
PUBLISH = "threads_poller.publish"
THROTTLE = "threads_poller.throttle"
WEBHOOK = "threads_poller.webhook"

AttrValue = str | bool | int | float
Attributes = Mapping[str, AttrValue | None]


class Span:
    """A span the caller may annotate; the no-op one ignores everything."""

    __slots__ = ()

    def set(self, key: str, value: AttrValue | None) -> None:
        """Set one attribute (None: not set)."""

    def update(self, attributes: Attributes) -> None:
        """Set several attributes (None values: not set)."""

    def error(self, kind: str) -> None:
        """Mark the span failed, with a kind (a fixed word, never an error's text)."""

    def end(self) -> None:
        """End a span from ``Tracing.start`` (a ``span`` block ends its own)."""

    @property
    def traceparent(self) -> str | None:
        """This span's context as a W3C ``traceparent`` (None: no trace)."""
        return None


class _NoopSpanContext:
    __slots__ = ()

    def __enter__(self) -> Span:
        return NOOP_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NOOP_SPAN = Span()
_NOOP_CONTEXT = _NoopSpanContext()


class Tracing:
    """Tracing turned off: every method does nothing, cheaply."""

    enabled = False

    def span(
        self,
        name: str,
        *,
        parent: str | None = None,
        attributes: Attributes | None = None,
        kind: str = "internal",
    ) -> contextlib.AbstractContextManager[Span]:
        """A span named ``name`` (one of this module's names), current inside the block: a
        child of ``parent`` (a valid ``traceparent``) when given, else of the current span."""
        return _NOOP_CONTEXT

    def start(
        self,
        name: str,
        *,
        parent: str | None = None,
        attributes: Attributes | None = None,
        kind: str = "internal",
    ) -> Span:
        """A span that is not made current (``span.end()`` ends it): a child of ``parent``
        when given, else the root of a new trace."""
        return NOOP_SPAN

    def traceparent(self) -> str | None:
        """The current span's ``traceparent`` (to send onward), None when there is none."""
        return None

    def shutdown(self) -> None:
        """Export what is buffered and stop (the process is ending)."""


NOOP = Tracing()
_active: Tracing = NOOP


def active() -> Tracing:
    """The process's tracing (``NOOP`` unless ``configure`` turned it on)."""
    return _active


def configure(env: Mapping[str, str] | None = None) -> Tracing:
    """Turn tracing on when the environment asks for it (once per process; later calls return
    what the first set up). Without the ``otel`` extra installed, tracing stays off with one
    warning: the service runs as it would without the variables."""
    global _active
    if _active is not NOOP:
        return _active
    env = os.environ if env is None else env
    if not tracing_wanted(env):
        return _active
    try:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: F401
    except ImportError:
        log.warning(
            "OpenTelemetry variables are set but the SDK is not installed "
            "(pip install 'threads-poller[otel]'): tracing stays off"
        )
        return _active
    _active = _sdk_tracing(trace_exporters(env))
    return _active


def install(tracing: Tracing) -> Tracing:
    """Make ``tracing`` the process's (tests: an in-memory exporter's); returns the previous."""
    global _active
    previous, _active = _active, tracing
    return previous


def _sdk_tracing(exporters: tuple[str, ...]) -> Tracing:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named the service.
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol != "http/protobuf":
                log.warning(
                    "OTLP protocol %r is not supported (only http/protobuf): using it",
                    protocol[:40],
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER names %r, not otlp or console: ignored", name[:40])
            continue
        # Spans leave in batches, off the event loop (the processor's own thread).
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on", extra={"exporters": ",".join(exporters)})
    return SdkTracing(provider)


class _SdkSpan(Span):
    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: AttrValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def update(self, attributes: Attributes) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def error(self, kind: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", kind)
        self._span.set_status(Status(StatusCode.ERROR, kind))

    def end(self) -> None:
        self._span.end()

    @property
    def traceparent(self) -> str | None:
        ctx = self._span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class SdkTracing(Tracing):
    """Tracing through an OpenTelemetry SDK ``TracerProvider`` (its own, not the global one:
    a producer's own tracing in the same process is left alone)."""

    enabled = True

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._propagator = TraceContextTextMapPropagator()
        self._kinds = {
            "internal": SpanKind.INTERNAL,
            "client": SpanKind.CLIENT,
            "producer": SpanKind.PRODUCER,
            "consumer": SpanKind.CONSUMER,
            "server": SpanKind.SERVER,
        }

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        parent: str | None = None,
        attributes: Attributes | None = None,
        kind: str = "internal",
    ) -> Iterator[Span]:
        from opentelemetry import trace

        context = self._propagator.extract({"traceparent": parent}) if parent else None
        span = self._tracer.start_span(
            name,
            context=context,
            kind=self._kinds[kind],
            attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ) as current:
            # An exception is kept by its type only: its text may hold a URL with a token.
            try:
                yield _SdkSpan(current)
            except BaseException as exc:
                _SdkSpan(current).error(type(exc).__name__)
                raise

    def start(
        self,
        name: str,
        *,
        parent: str | None = None,
        attributes: Attributes | None = None,
        kind: str = "internal",
    ) -> Span:
        from opentelemetry.context import Context

        # Context(): no parent at all (not the current span: siblings stay siblings).
        context = self._propagator.extract({"traceparent": parent}) if parent else Context()
        return _SdkSpan(
            self._tracer.start_span(
                name,
                context=context,
                kind=self._kinds[kind],
                attributes={k: v for k, v in (attributes or {}).items() if v is not None},
            )
        )

    def traceparent(self) -> str | None:
        from opentelemetry import trace

        return _SdkSpan(trace.get_current_span()).traceparent

    def shutdown(self) -> None:
        self.provider.shutdown()


@contextlib.contextmanager
def enqueue_spans(
    requests: Sequence[EnqueueRequest], door: str
) -> Iterator[tuple[list[EnqueueRequest], list[Span]]]:
    """The enqueue span of each request (the root of its poll's trace, or a child of the
    producer's ``traceparent``), and the requests carrying it as their ``traceparent``: what
    the poll stores, so that its checks are its children. Tracing off: the requests as given."""
    tracer = active()
    if not tracer.enabled:
        yield list(requests), [NOOP_SPAN] * len(requests)
        return
    spans = [
        tracer.start(
            POLL,
            parent=req.traceparent,
            kind="producer",
            attributes={
                "threads_poller.container_id": req.container_id,
                "threads_poller.account": req.account,
                "threads_poller.door": door,
                "threads_poller.producer": req.producer.name,
                "threads_poller.children": len(req.children) or None,
            },
        )
        for req in requests
    ]
    try:
        yield (
            [
                dataclasses.replace(req, traceparent=span.traceparent or req.traceparent)
                for req, span in zip(requests, spans, strict=True)
            ],
            spans,
        )
    except BaseException as exc:
        for span in spans:
            span.error(type(exc).__name__)
        raise
    finally:
        for span in spans:
            span.end()


def note_enqueued(spans: Sequence[Span], outcomes: Sequence[Enqueued]) -> None:
    """Each enqueue span's outcome (enqueued, duplicate, refused...)."""
    for span, done in zip(spans, outcomes, strict=False):
        span.set("threads_poller.enqueue.outcome", done.outcome)


def safe_url(url: str) -> str:
    """A URL as a span may carry it: its credentials, query and fragment gone."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return redact(url)[:200]
