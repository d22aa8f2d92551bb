"""Prometheus metrics: what a real worker exposes on METRICS_PORT after real checks."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bench.harness import free_port
from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import finals, wait_until
from tests.helpers.worker import running_worker
from worker import enqueue_many
from worker.ops import metrics
from worker.store.admin import AdminStore
from worker.store.keys import Keys

Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(port: int) -> dict[Sample, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def current(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def deployment(name: str) -> float:
    """A gauge of serve's registry (the deployment's shared state)."""
    return metrics.SERVE_REGISTRY.get_sample_value(name) or 0.0


def key(name: str, **labels: str) -> Sample:
    return (name, frozenset(labels.items()))


async def test_gauges_sample_the_shared_state(redis: Redis, settings: Settings, keys: Keys) -> None:
    admin = AdminStore.from_settings(redis, settings)
    await enqueue_many(redis, ["7001", "7002", "7003"], settings=settings)
    # One of them scheduled a minute ahead (as a Retry would): queued, in flight, not due.
    job_ids = await redis.zrange(keys.queue, 0, -1)
    await redis.zadd(keys.queue, {job_ids[0]: (time.time() + 60) * 1000})
    await redis.xadd(keys.dead_letters, {"entry_id": "1-0", "reason": "test", "fields": "{}"})
    enqueued_ms = min(score for _, score in await redis.zrange(keys.queue, 0, -1, withscores=True))

    await redis.xadd(keys.webhook_dead_letters, {"container_id": "7001", "reason": "HTTP 500"})
    got = await metrics.sample(admin, now=enqueued_ms / 1000 + 10, overdue_after=50)
    assert deployment("threads_poller_containers_in_flight") == 3 == got.inflight
    assert deployment("threads_poller_queue_jobs") == 3
    assert deployment("threads_poller_queue_due_jobs") == 2
    assert deployment("threads_poller_queue_lag_seconds") == pytest.approx(10, abs=0.01)
    assert deployment("threads_poller_intake_dead_letter_stream_length") == 1
    assert deployment("threads_poller_webhook_dead_letter_stream_length") == 1
    assert deployment("threads_poller_polls_past_deadline") == 0
    assert deployment("threads_poller_workers_alive") == 0
    # Past the deadline (1 s here) by more than the bound: stuck.
    got = await metrics.sample(admin, now=enqueued_ms / 1000 + 100, overdue_after=50)
    assert got.past_deadline == 3 == deployment("threads_poller_polls_past_deadline")

    await redis.delete(keys.queue)
    await metrics.sample(admin)
    assert deployment("threads_poller_queue_due_jobs") == 0
    assert deployment("threads_poller_queue_lag_seconds") == 0


async def test_worker_exposes_check_outcomes(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    scripts = {
        "5101": ["IN_PROGRESS", "FINISHED"],
        "5102": ["notfound"],
        "5103": ["throttle", "FINISHED"],
        "5104": ["ERROR:INVALID_BIT_RATE"],
        "5105": ["notfound"],
    }
    for cid, steps in scripts.items():
        sim.state.set_script(cid, steps)
    port = free_port()
    settings = settings.model_copy(update={"metrics_port": port, "poll_max_seconds": 5.0})
    watched = [
        key("threads_poller_checks_total", status="IN_PROGRESS", platform="threads"),
        key("threads_poller_checks_total", status="FINISHED", platform="threads"),
        key("threads_poller_checks_total", status="ERROR", platform="threads"),
        key("threads_poller_check_errors_total", error_kind="not_found", platform="threads"),
        key("threads_poller_check_errors_total", error_kind="throttled", platform="threads"),
        key("threads_poller_api_throttled_total"),
        key("threads_poller_final_states_total", status="FINISHED", platform="threads"),
        key("threads_poller_final_states_total", status="FAILED", platform="threads"),
        key("threads_poller_final_states_total", status="ERROR", platform="threads"),
        key("threads_poller_api_request_duration_seconds_count", outcome="ok"),
        key("threads_poller_api_request_duration_seconds_count", outcome="error"),
        key("threads_poller_check_lag_seconds_count"),
        key("threads_poller_intake_accepted_total"),
        key("threads_poller_intake_dead_letters_total"),
    ]
    before = {k: current(k[0], **dict(k[1])) for k in watched}

    await enqueue_many(redis, ["5101", "5102", "5103", "5104"], settings=settings)
    await redis.xadd(keys.intake, {"container_id": "5105"})
    await redis.xadd(keys.intake, {"container_id": "not-an-id"})
    ids = list(scripts)
    async with running_worker(settings) as worker:
        await finals(redis, settings, ids, timeout=20)
        after = scrape(port)
        assert worker.metrics_server is not None and worker.metrics_server.port == port
    delta = {k: after.get(k, 0.0) - before[k] for k in watched}

    assert delta == {
        watched[0]: 1,  # 5101's first answer
        watched[1]: 2,  # 5101, 5103
        watched[2]: 1,  # 5104
        watched[3]: 4,  # 5102, 5105 (via the intake): twice each, as 100/33 must repeat
        watched[4]: 1,  # 5103's first answer
        watched[5]: 1,
        watched[6]: 2,
        watched[7]: 2,
        watched[8]: 1,
        watched[9]: 4,  # IN_PROGRESS + 2 FINISHED + ERROR
        watched[10]: 5,  # 4 not found + 1 throttled
        watched[11]: 9,  # every check that asked the API
        watched[12]: 1,
        watched[13]: 1,
    }
    assert sum(sim.state.calls_for(cid).count for cid in ids) == 9
    # The deployment's gauges are serve's (one value for the deployment), never a worker's.
    assert not [name for name, _ in after if "in_flight" in name or "stream_length" in name]
    assert after[key("threads_poller_worker_job_slots")] == min(
        settings.worker_max_jobs, settings.api_max_concurrency
    )
    # Latency observations are real durations, not zeros.
    assert after[key("threads_poller_api_request_duration_seconds_sum", outcome="ok")] > 0

    # The server went away with the worker: the port is free again.
    with pytest.raises(urllib.error.URLError):
        scrape(port)


async def test_metrics_port_zero_serves_nothing(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    assert settings.metrics_port == 0
    async with running_worker(settings) as worker:
        await wait_until(lambda: worker.background, timeout=10)
        assert worker.metrics_server is None
        names = {t.get_name() for t in worker.background}
        assert "metrics" not in names and "heartbeat" in names


def test_busy_port_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="threads_poller.metrics"):
            assert metrics.start_server(port) is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text  # loopback by default


async def test_server_serves_and_closes() -> None:
    server = metrics.start_server(0, "127.0.0.1")
    assert server is not None and server.port > 0
    try:
        assert key("threads_poller_checks_total", status="FINISHED", platform="threads") in scrape(
            server.port
        )
    finally:
        await metrics.stop_server(server)
    with pytest.raises(urllib.error.URLError):
        scrape(server.port)
