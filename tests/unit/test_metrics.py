"""Prometheus metrics (pure): bounded label values, every series there from the start, no empty
label, and the deployment's gauges only in serve's registry. What a real worker exposes on
METRICS_PORT: tests/integration/test_metrics.py.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api_client.policy import ErrorKind
from worker.core.publishing import PublishVerdict
from worker.ops import metrics


def samples(registry: object) -> list[tuple[str, dict[str, str]]]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return [
        (s.name, dict(s.labels))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("threads_poller_")
    ]


def test_status_label_is_bounded() -> None:
    assert metrics.status_label("FINISHED") == "FINISHED"
    assert metrics.status_label("SOMETHING_NEW_FROM_META") == "OTHER"
    assert metrics.status_label(None) == "OTHER"


def test_no_label_is_ever_empty() -> None:
    for registry in (REGISTRY, metrics.SERVE_REGISTRY):
        for name, labels in samples(registry):
            assert all(v != "" for v in labels.values()), (name, labels)


def test_every_series_exists_from_the_start() -> None:
    got = samples(REGISTRY)

    def values(name: str, label: str) -> set[str]:
        return {labels[label] for n, labels in got if n == name and label in labels}

    assert values("threads_poller_checks_total", "status") == {
        "IN_PROGRESS",
        "FINISHED",
        "PUBLISHED",
        "ERROR",
        "EXPIRED",
        "OTHER",
    }
    assert values("threads_poller_check_errors_total", "error_kind") == {k.value for k in ErrorKind}
    assert values("threads_poller_webhook_deliveries_total", "outcome") == {
        "delivered",
        "retry",
        "dead",
    }
    assert values("threads_poller_publishes_total", "verdict") == {v.value for v in PublishVerdict}
    finals = values("threads_poller_final_states_total", "status")
    assert {"FINISHED", "TIMED_OUT", "FAILED", "PUBLISH_FAILED"} <= finals
    assert "CANCELLED" not in finals  # made by an operator, never by a worker
    assert values("threads_poller_api_request_duration_seconds_count", "outcome") == {"ok", "error"}


def test_shared_state_gauges_are_serves_alone() -> None:
    worker_names = {n for n, _ in samples(REGISTRY)}
    serve_names = {n for n, _ in samples(metrics.SERVE_REGISTRY)}
    for gauge in (
        "threads_poller_containers_in_flight",
        "threads_poller_queue_jobs",
        "threads_poller_queue_lag_seconds",
        "threads_poller_intake_dead_letter_stream_length",
        "threads_poller_webhook_dead_letter_stream_length",
        "threads_poller_workers_alive",
        "threads_poller_accounts_throttled",
        "threads_poller_polls_past_deadline",
    ):
        assert gauge in serve_names and gauge not in worker_names
    assert "threads_poller_worker_jobs_running" in worker_names
    assert "threads_poller_checks_total" not in serve_names
