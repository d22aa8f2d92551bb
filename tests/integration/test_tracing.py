"""Issue 24, OpenTelemetry: the span tree of one poll, made by the real worker against the real
Redis and the simulator, exported to the SDK's in-memory exporter; a producer's ``traceparent``
at each door; no secret in any span."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.receivers import webhook_receiver
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import final_of, wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_publish import ACCOUNT, pub_settings
from tests.integration.test_webhooks import SECRET, hook_settings
from worker import enqueue
from worker.client.client import PollerClient
from worker.core.errors import InvalidIdError
from worker.core.tracing import check_traceparent, trace_id_of
from worker.ops import tracing
from worker.store.keys import Keys

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = int(trace_id_of(TP), 16)
PARENT_SPAN = int(TP[36:52], 16)


@contextlib.contextmanager
def in_memory() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.install(tracing.SdkTracing(provider))
    try:
        yield exporter
    finally:
        tracing.install(previous)
        provider.shutdown()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def assert_no_secret(spans: Sequence[ReadableSpan], secrets: Sequence[str]) -> None:
    """Every exported attribute, event, status and name, as text: no secret in any."""
    for span in spans:
        text = json.dumps(
            {
                "name": span.name,
                "attributes": dict(span.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in span.events],
                "status": span.status.description,
                "resource": dict(span.resource.attributes),
            },
            default=str,
        )
        for secret in secrets:
            assert secret not in text, (span.name, secret)


async def test_the_span_tree_of_one_poll_in_the_producers_trace(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """Enqueued with the producer's traceparent (the Python client), checked through a
    throttled answer, published, delivered: every span in the producer's trace, each check a
    child of the producer's span, the throttle pause and the publish call inside their check,
    the webhook's traceparent header the delivery span's."""
    settings = hook_settings(pub_settings(settings, poll_max_seconds=20.0))
    cid = "24101"
    sim.state.set_script(cid, ["IN_PROGRESS", "throttle", "IN_PROGRESS", "FINISHED"])
    sim.state.set_quota(ACCOUNT, quota_usage=1)
    with in_memory() as exported:
        async with webhook_receiver([200]) as rec:
            await enqueue(
                redis,
                cid,
                account=ACCOUNT,
                publish=True,
                webhook_url=rec.url,
                traceparent=TP,
                settings=settings,
            )
            async with running_worker(settings):
                result = await final_of(redis, settings, cid, timeout=30)
                await wait_until(lambda: len(rec.got) == 1, timeout=15)
                await wait_until(lambda: named(exported.get_finished_spans(), tracing.WEBHOOK))
        spans = exported.get_finished_spans()
    assert result.status == "PUBLISHED", result
    # One trace: the producer's.
    assert {s.context.trace_id for s in spans} == {TRACE_ID}, [s.name for s in spans]
    checks = named(spans, tracing.CHECK)
    status_checks = [
        c for c in checks if (c.attributes or {}).get("threads_poller.plan") == "status"
    ]
    assert len(status_checks) == 4, [dict(c.attributes or {}) for c in checks]
    for check in checks:
        assert check.parent is not None and check.parent.span_id == PARENT_SPAN
        attrs = check.attributes or {}
        assert attrs["threads_poller.container_id"] == cid
        assert attrs["threads_poller.account"] == ACCOUNT
    answers = [(c.attributes or {}).get("threads_poller.api.status") for c in status_checks]
    assert answers.count("IN_PROGRESS") == 2 and answers.count("FINISHED") == 1, answers
    throttled = [c for c in status_checks if "threads_poller.error.kind" in (c.attributes or {})]
    assert len(throttled) == 1
    t_attrs = throttled[0].attributes or {}
    assert t_attrs["threads_poller.error.kind"] == "throttled"
    assert t_attrs["threads_poller.graph.code"] == 4
    assert isinstance(t_attrs["threads_poller.api.latency_ms"], float)
    assert "threads_poller.graph.fbtrace_id" in t_attrs
    assert not throttled[0].status.is_ok
    # The throttle pause: a child of the check that heard the throttled answer.
    (pause,) = named(spans, tracing.THROTTLE)
    assert pause.parent is not None and pause.parent.span_id == throttled[0].context.span_id
    pause_s = (pause.attributes or {})["threads_poller.throttle.pause_s"]
    assert isinstance(pause_s, float) and pause_s > 0
    # The publish call: a child of its run's check span.
    (publish,) = named(spans, tracing.PUBLISH)
    runs = {c.context.span_id for c in checks}
    assert publish.parent is not None and publish.parent.span_id in runs
    assert (publish.attributes or {})["threads_poller.publish.verdict"] == "published"
    # The delivery: in the trace, its traceparent sent onward in the request's header.
    (hook,) = named(spans, tracing.WEBHOOK)
    assert (hook.attributes or {})["http.response.status_code"] == 200
    assert "?" not in str((hook.attributes or {})["threads_poller.webhook.url"])
    sent = {k.lower(): v for k, v in rec.got[0][1].items()}["traceparent"]
    assert sent == f"00-{TRACE_ID:032x}-{hook.context.span_id:016x}-01"
    assert_no_secret(spans, [TEST_TOKEN, SECRET])


async def test_without_a_producers_trace_a_poll_is_still_one_trace(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """No traceparent, enqueued where tracing is off: the checks of the poll share one trace
    (derived from the poll), whichever run makes them."""
    cid = "24102"
    sim.state.set_script(cid, ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    await enqueue(redis, cid, settings=settings)
    with in_memory() as exported:
        async with running_worker(settings):
            await final_of(redis, settings, cid)
        spans = named(exported.get_finished_spans(), tracing.CHECK)
    assert len(spans) == 3
    assert len({s.context.trace_id for s in spans}) == 1
    assert len({s.parent.span_id for s in spans if s.parent}) == 1


async def test_the_intake_door_honours_and_checks_a_traceparent(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """A valid field: the enqueue span is the producer's span's child, the checks its
    children. An invalid one: the entry goes to the dead letters, saying why."""
    sim.state.set_script("24103", ["FINISHED"])
    with in_memory() as exported:
        await redis.xadd(keys.intake, {"container_id": "24103", "traceparent": TP})
        await redis.xadd(keys.intake, {"container_id": "24104", "traceparent": TP.upper()})
        async with running_worker(settings):
            await final_of(redis, settings, "24103")
            await wait_until(lambda: redis.xlen(keys.dead_letters), timeout=10)
        spans = exported.get_finished_spans()
    (poll,) = named(spans, tracing.POLL)
    assert poll.context.trace_id == TRACE_ID
    assert poll.parent is not None and poll.parent.span_id == PARENT_SPAN
    assert (poll.attributes or {})["threads_poller.door"] == "intake"
    (check,) = named(spans, tracing.CHECK)
    assert check.parent is not None and check.parent.span_id == poll.context.span_id
    (dead,) = await redis.xrange(keys.dead_letters)
    letter: dict[Any, Any] = dead[1]
    assert b"traceparent" in letter[b"reason"] and b"24104" in letter[b"fields"]
    assert await redis.exists(keys.result("24104")) == 0


async def test_the_client_refuses_a_bad_traceparent(redis: Redis, settings: Settings) -> None:
    client = PollerClient.from_settings(settings, redis)
    for bad in ("junk", TP.upper(), TP + "-00"):
        with pytest.raises(InvalidIdError, match="traceparent"):
            await client.enqueue("24105", traceparent=bad)
    assert await redis.exists(Keys(settings.key_prefix).result("24105")) == 0


async def test_the_http_door_honours_and_checks_the_traceparent_header(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """POST /v1/containers: the header's trace is the enqueue span's parent and the poll's;
    a malformed header is ignored (W3C): the poll is taken and starts its own trace."""
    from tests.web_helpers import running_api

    keys = Keys(settings.key_prefix)
    sim.state.set_script("24106", ["FINISHED"])
    with in_memory() as exported:
        async with running_api(settings) as api:
            bad = await api.post(
                "/v1/containers", json={"container_id": "24107"}, headers={"traceparent": "x"}
            )
            # W3C Trace Context: a receiver ignores a value it cannot use (Schemathesis found the
            # document and the server at odds over empty and all-zero values): the polls are
            # taken and start their own trace.
            huge = await api.post(
                "/v1/containers", json={"container_id": "24110"}, headers={"traceparent": "0" * 513}
            )
            empty = await api.post(
                "/v1/containers", json={"container_id": "24109"}, headers={"traceparent": ""}
            )
            zeros = await api.post(
                "/v1/containers",
                json={"container_id": "24108"},
                headers={"traceparent": f"00-{'0' * 32}-{'0' * 16}-00"},
            )
            good = await api.post(
                "/v1/containers", json={"container_id": "24106"}, headers={"traceparent": TP}
            )
        async with running_worker(settings):
            await final_of(redis, settings, "24106")
        spans = exported.get_finished_spans()
    assert huge.status == 422 and huge.body["error"]["code"] == "invalid_traceparent"
    assert await redis.exists(keys.result("24110")) == 0
    for ignored, cid in ((bad, "24107"), (empty, "24109"), (zeros, "24108")):
        assert ignored.status == 202, ignored.body
        stored = await redis.hget(keys.result(cid), "traceparent")  # type: ignore[misc]
        assert stored is None or check_traceparent(stored.decode()), stored
    assert good.status == 202
    # 24108's poll (all-zero traceparent ignored) has a trace of its own.
    (poll,) = [s for s in named(spans, tracing.POLL) if s.context.trace_id == TRACE_ID]
    assert poll.parent is not None and poll.parent.span_id == PARENT_SPAN
    others = [s for s in named(spans, tracing.POLL) if s.context.trace_id != TRACE_ID]
    assert all(s.context.trace_id != 0 for s in others)
    (check,) = [s for s in named(spans, tracing.CHECK) if s.context.trace_id == TRACE_ID]
    assert check.parent is not None and check.parent.span_id == poll.context.span_id
