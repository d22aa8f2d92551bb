"""The shipped Grafana dashboard's structure and conventions (issue 23).

No package on PyPI ships Grafana's dashboard JSON schema usable offline (grafana-foundation-sdk
has generated classes whose ``from_json`` accepts any field of any type), so
``test_structure`` checks by hand, strictly, what Grafana's dashboard schema (schemaVersion 39)
requires of the parts this dashboard uses: the required fields, their types, enums and ranges.
The conventions: every range is ``$__rate_interval``, every selector is scoped by ``$job`` (and
a worker's own series by ``$instance``), one unit per axis, thresholds at the alert rules'
numbers. tests/system/test_dashboard_queries.py runs every query on a real Prometheus.
"""

from __future__ import annotations

import re
from typing import Any

import promql_parser as pq
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

import worker.web.app  # noqa: F401 - registers serve's HTTP metrics
from tests.dashboard import ALERTS, Query, load, queries
from worker.ops import metrics

JOB_VALUE, INSTANCE_VALUE = "JOB-VARIABLE", "INSTANCE-VARIABLE"
PANEL_TYPES = {"stat", "timeseries"}  # what this dashboard uses; a new type needs its checks
VARIABLE_TYPES = {"query", "adhoc", "constant", "datasource", "interval", "textbox", "custom"}
DASHBOARD_KEYS = {
    "id", "uid", "title", "description", "revision", "gnetId", "tags", "timezone", "editable",
    "graphTooltip", "time", "timepicker", "fiscalYearStartMonth", "liveNow", "weekStart",
    "refresh", "schemaVersion", "version", "panels", "templating", "annotations", "links",
}  # fmt: skip
PANEL_KEYS = {
    "id", "type", "title", "description", "datasource", "gridPos", "fieldConfig", "options",
    "targets", "transparent", "links", "interval", "maxDataPoints", "transformations",
}  # fmt: skip


def sample_names(registry: Any) -> set[str]:
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


WORKER_METRICS = sample_names(REGISTRY)
SERVE_METRICS = sample_names(metrics.SERVE_REGISTRY)


def panels() -> list[dict[str, Any]]:
    return list(load()["panels"])


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in panels() if p["title"] == title]
    return found


def is_type(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def check_thresholds(where: str, thresholds: dict[str, Any]) -> None:
    assert set(thresholds) == {"mode", "steps"}, where
    assert thresholds["mode"] in ("absolute", "percentage"), where
    steps = thresholds["steps"]
    assert steps and steps[0]["value"] is None, f"{where}: the first step is the base (null)"
    values = [s["value"] for s in steps[1:]]
    assert all(is_type(v, (int, float)) for v in values), where
    assert values == sorted(values) and len(set(values)) == len(values), where
    for s in steps:
        assert set(s) == {"color", "value"} and is_type(s["color"], str), where


def check_datasource(where: str, ref: Any) -> None:
    assert ref == {"type": "prometheus", "uid": "${datasource}"}, where


def test_structure() -> None:
    data = load()
    assert set(data) <= DASHBOARD_KEYS, set(data) - DASHBOARD_KEYS
    # Required by the schema: schemaVersion, templating, annotations.
    assert is_type(data["schemaVersion"], int) and data["schemaVersion"] >= 36
    assert set(data["annotations"]) == {"list"} and data["annotations"]["list"] == []
    assert is_type(data["uid"], str) and 8 <= len(data["uid"]) <= 40
    assert is_type(data["title"], str) and is_type(data["version"], int)
    assert set(data["time"]) == {"from", "to"}
    assert data["graphTooltip"] in (0, 1, 2) and is_type(data["editable"], bool)

    variables = data["templating"]["list"]
    assert set(data["templating"]) == {"list"}
    assert [v["name"] for v in variables] == ["datasource", "job", "instance"]
    for v in variables:
        assert v["type"] in VARIABLE_TYPES and is_type(v["name"], str), v
        assert v.get("hide", 0) in (0, 1, 2) and v.get("refresh", 0) in (0, 1, 2), v
        assert v.get("sort", 0) in range(9), v
        current = v.get("current")
        assert current == {} or set(current) >= {"text", "value"}, v
    for v in variables[1:]:
        check_datasource(v["name"], v["datasource"])
        assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ".*"

    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)) and all(is_type(i, int) for i in ids)
    occupied: set[tuple[int, int]] = set()
    for p in data["panels"]:
        where = p["title"]
        assert set(p) <= PANEL_KEYS, (where, set(p) - PANEL_KEYS)
        assert p["type"] in PANEL_TYPES and is_type(p["title"], str), where
        check_datasource(where, p["datasource"])
        pos = p["gridPos"]
        assert set(pos) == {"x", "y", "w", "h"} and all(is_type(v, int) for v in pos.values())
        assert 0 < pos["w"] <= 24 and 0 <= pos["x"] < 24 and pos["x"] + pos["w"] <= 24, where
        assert pos["h"] > 0 and pos["y"] >= 0, where
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{where} overlaps another panel"
        occupied |= cells
        config = p["fieldConfig"]
        assert set(config) == {"defaults", "overrides"}, where
        check_thresholds(where, config["defaults"]["thresholds"])
        for o in config["overrides"]:
            assert set(o) == {"matcher", "properties"} and set(o["matcher"]) == {"id", "options"}
            for prop in o["properties"]:
                assert set(prop) == {"id", "value"}, where
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert set(t) == {"refId", "datasource", "expr", "legendFormat"}, where
            check_datasource(where, t["datasource"])


def test_the_structure_check_really_checks() -> None:
    with pytest.raises(AssertionError):
        check_thresholds("x", {"mode": "absolute", "steps": [{"color": "red", "value": 1}]})
    with pytest.raises(AssertionError):
        check_thresholds(
            "x",
            {
                "mode": "absolute",
                "steps": [
                    {"color": "green", "value": None},
                    {"color": "red", "value": 60},
                    {"color": "red", "value": 6},
                ],
            },
        )
    with pytest.raises(AssertionError):
        check_datasource("x", {"type": "prometheus", "uid": "prometheus"})


def matchers(expr: str) -> list[tuple[str, dict[str, tuple[Any, str]]]]:
    """(metric, {label: (operator, value)}) of every selector in ``expr``."""
    found: list[tuple[str, dict[str, tuple[Any, str]]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, pq.VectorSelector):
            labels = {
                m.name: (m.op, m.value) for m in node.matchers.matchers if m.name != "__name__"
            }
            found.append((node.name or "", labels))
        elif isinstance(node, pq.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, pq.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, pq.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, pq.AggregateExpr | pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
            walk(node.expr)

    walk(pq.parse(expr))
    return found


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.name)
def test_every_range_is_the_rate_interval(query: Query) -> None:
    # Grafana's $__rate_interval is at least four scrape intervals: a fixed [1m] is empty with
    # a 1m scrape interval and jagged at long time ranges.
    ranges = re.findall(r"\[([^\]]*)\]", query.expr)
    assert all(r == "$__rate_interval" for r in ranges), ranges


@pytest.mark.parametrize("query", queries(), ids=lambda q: q.name)
def test_every_selector_is_scoped_by_job_and_instance(query: Query) -> None:
    expr = query.substituted(rate_interval="1m", job=JOB_VALUE, instance=INSTANCE_VALUE)
    for metric, labels in matchers(expr):
        assert labels.get("job") == (pq.MatchOp.Re, JOB_VALUE), (metric, labels)
        if metric in WORKER_METRICS:
            assert labels.get("instance") == (pq.MatchOp.Re, INSTANCE_VALUE), (metric, labels)
        else:
            # serve's gauges are one value for the deployment: a worker instance picked in
            # $instance must not blank them, so they follow the job alone.
            assert metric in SERVE_METRICS and "instance" not in labels, (metric, labels)


def test_one_unit_per_axis() -> None:
    for p in panels():
        if p["type"] != "timeseries":
            continue
        refs = {t["refId"] for t in p["targets"]}
        axes = {"left": {p["fieldConfig"]["defaults"]["unit"]}, "right": set()}
        for o in p["fieldConfig"]["overrides"]:
            props = {prop["id"]: prop["value"] for prop in o["properties"]}
            if "unit" not in props:
                continue
            # A series of another unit goes on an axis of its own, never the default one.
            assert o["matcher"]["id"] == "byFrameRefID" and o["matcher"]["options"] in refs
            assert props.get("custom.axisPlacement") == "right", p["title"]
            axes["right"].add(props["unit"])
        assert len(axes["right"]) <= 1 and not axes["left"] & axes["right"], p["title"]


def alert_expr(name: str) -> str:
    data = YAML(typ="safe").load(ALERTS.read_text())
    (rule,) = [r for g in data["groups"] for r in g["rules"] if r["alert"] == name]
    return str(rule["expr"])


# panel -> (alert rule, the comparison in its expression, the threshold step the panel shows).
# A gauge of whole numbers "> 0" turns red at 1.
ALERT_THRESHOLDS = {
    "Past deadline": ("ThreadsPollerPollsPastDeadline", "polls_past_deadline > 0", 1),
    "Workers alive": ("ThreadsPollerNoWorkerAlive", "threads_poller_workers_alive == 0", 1),
    "Queue lag": ("ThreadsPollerQueueLagging", "threads_poller_queue_lag_seconds > 60", 60),
    "Check lateness": ("ThreadsPollerQueueLagging", "threads_poller_queue_lag_seconds > 60", 60),
    "Tokens rejected": ("ThreadsPollerTokenRejected", "token_rejected > 0", 1),
    "Longest throttle": ("ThreadsPollerAccountThrottledForLong", "seconds > 1800", 1800),
    "Worker saturation": ("ThreadsPollerWorkersSaturated", "> 0.9", 0.9),
    "Workers": ("ThreadsPollerNoWorkerAlive", "threads_poller_workers_alive == 0", 1),
}  # fmt: skip


@pytest.mark.parametrize("title", ALERT_THRESHOLDS)
def test_thresholds_are_the_alert_rules_numbers(title: str) -> None:
    alert, comparison, step = ALERT_THRESHOLDS[title]
    assert comparison in " ".join(alert_expr(alert).split()), (alert, comparison)
    p = panel(title)
    steps = [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
    assert steps == [step], (title, steps)
    if p["type"] == "timeseries":  # drawn, not only used for colours
        assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


def test_the_webhook_queue_has_a_panel() -> None:
    exprs = " ".join(t["expr"] for t in panel("Webhook deliveries' queue")["targets"])
    for gauge in (
        "threads_poller_webhook_queue_jobs",
        "threads_poller_webhook_queue_due_jobs",
        "threads_poller_webhook_queue_lag_seconds",
    ):
        assert gauge in exprs
