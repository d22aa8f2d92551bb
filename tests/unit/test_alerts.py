"""The shipped Prometheus alert rules and Grafana dashboard (deploy/) use only metrics and
labels that exist: every expression is parsed (promql-parser), every selector's metric must be
exported by a worker process or by serve, and every label it matches or groups by must be one
of that metric's. Pure: the metrics are read from the registries, not scraped. The
dashboard's structure and conventions: tests/unit/test_dashboard.py; every query and expression
run by a real Prometheus: tests/system/test_dashboard_queries.py."""

from __future__ import annotations

from typing import Any

import promql_parser as pq
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

import worker.web.app  # noqa: F401 - registers serve's HTTP metrics
from tests.dashboard import ALERTS, Query, load, queries
from worker.ops import metrics

# Labels Prometheus itself adds to every scraped series, and the histogram bucket label.
ADDED = {"job", "instance", "le"}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from what a worker (default registry) and serve export."""
    out: dict[str, set[str]] = {}
    for registry in (REGISTRY, metrics.SERVE_REGISTRY):
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, set()).update(s.labels)
        # A labelled gauge whose series come and go (one per account, set by serve's sampler)
        # exports nothing until its first series: its name and label names come from the
        # registry.
        for name, collector in registry._names_to_collectors.items():
            labels = getattr(collector, "_labelnames", None)
            if labels and name not in out and getattr(collector, "_type", "") == "gauge":
                out[name] = set(labels)
    return out


def selectors(node: Any, found: list[tuple[str, set[str]]], by: set[str]) -> None:
    """Every (metric name, labels it needs) under ``node``."""
    if isinstance(node, pq.VectorSelector):
        labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
        found.append((node.name or "", labels | by))
    elif isinstance(node, pq.MatrixSelector):
        selectors(node.vector_selector, found, by)
    elif isinstance(node, pq.AggregateExpr):
        grouped = set(node.modifier.labels) if node.modifier is not None else set()
        if node.modifier is not None and node.modifier.type == pq.AggModifierType.Without:
            grouped = set()
        selectors(node.expr, found, by | grouped)
    elif isinstance(node, pq.BinaryExpr):
        selectors(node.lhs, found, set())
        selectors(node.rhs, found, set())
    elif isinstance(node, pq.Call):
        for arg in node.args:
            selectors(arg, found, by)
    elif isinstance(node, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
        selectors(node.expr, found, by)


def check_expression(expr: str, known: dict[str, set[str]]) -> list[str]:
    found: list[tuple[str, set[str]]] = []
    selectors(pq.parse(expr), found, set())
    assert found, f"no metric in {expr!r}"
    problems = []
    for name, labels in found:
        if name not in known:
            problems.append(f"{name}: no such metric")
            continue
        missing = labels - known[name] - ADDED
        if missing:
            problems.append(f"{name}: no label {sorted(missing)}")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    data = YAML(typ="safe").load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


# Stand-ins for the dashboard's variables: parseable, and recognisable in a matcher.
JOB_VALUE, INSTANCE_VALUE = "JOB-VARIABLE", "INSTANCE-VARIABLE"


def parseable(query: Query) -> str:
    return query.substituted(rate_interval="1m", job=JOB_VALUE, instance=INSTANCE_VALUE)


def test_the_rules_cover_what_the_issue_asks_for() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for needed in (
        "ThreadsPollerNoWorkerAlive",
        "ThreadsPollerPollsPastDeadline",
        "ThreadsPollerDeadLettersGrowing",
        "ThreadsPollerAccountThrottledForLong",
        "ThreadsPollerTokenExpiresSoon",
        "ThreadsPollerTokenRefreshFailing",
    ):
        assert needed in names
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_uses_existing_metrics(rule: dict[str, Any]) -> None:
    assert check_expression(rule["expr"], exported()) == []


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.name)
def test_every_dashboard_panel_uses_existing_metrics(query: Query) -> None:
    assert check_expression(parseable(query), exported()) == []


def test_the_check_really_checks() -> None:
    known = exported()
    assert check_expression("threads_poller_no_such_thing > 0", known) == [
        "threads_poller_no_such_thing: no such metric"
    ]
    assert check_expression('threads_poller_checks_total{error_kind="token"}', known) == [
        "threads_poller_checks_total: no label ['error_kind']"
    ]
    assert check_expression("sum by (colour) (threads_poller_final_states_total)", known) == [
        "threads_poller_final_states_total: no label ['colour']"
    ]
    with pytest.raises(ValueError):
        pq.parse("sum(")


def test_dashboard_is_importable_json() -> None:
    data = load()
    assert data["uid"] == "threads-poller" and data["panels"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for p in data["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
