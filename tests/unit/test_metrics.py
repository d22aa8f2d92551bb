"""Prometheus metrics (pure): the status label takes a bounded set of values. What a real
worker exposes on METRICS_PORT: tests/integration/test_metrics.py.
"""

from __future__ import annotations

from worker.ops import metrics


def test_status_label_is_bounded() -> None:
    assert metrics.status_label("FINISHED") == "FINISHED"
    assert metrics.status_label("SOMETHING_NEW_FROM_META") == "OTHER"
    assert metrics.status_label(None) == ""
