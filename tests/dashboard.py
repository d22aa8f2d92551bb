"""The shipped Grafana dashboard (deploy/grafana/threads-poller.json) as its queries: read by
tests/unit/test_alerts.py (metrics, labels, structure) and tests/system/test_dashboard_queries.py
(every query run by a real Prometheus)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/threads-poller.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"

# The dashboard's variables, as Grafana writes them into a query.
RATE_INTERVAL = "$__rate_interval"
JOB = "$job"
INSTANCE = "$instance"


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.panel} {self.ref_id}"

    def substituted(self, *, rate_interval: str, job: str, instance: str) -> str:
        """The PromQL Grafana sends once it has replaced the dashboard's variables."""
        return (
            self.expr.replace(RATE_INTERVAL, rate_interval)
            .replace(INSTANCE, instance)
            .replace(JOB, job)
        )


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(data: dict[str, Any] | None = None) -> list[Query]:
    data = load() if data is None else data
    return [Query(p["title"], t["refId"], t["expr"]) for p in data["panels"] for t in p["targets"]]
