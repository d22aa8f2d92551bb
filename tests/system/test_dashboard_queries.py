"""Every query of the Grafana dashboard and every expression of the alert rules, run by a real
Prometheus (Debian's ``prometheus``, installed by scripts/test.sh) that scrapes a real worker
process and a real ``serve`` under one job, with the dashboard's variables substituted the way
Grafana does. Each must parse and answer without error, and the dashboard's must return series:
nothing the dashboard shows is legitimately absent once a worker and serve run (every labelled
series exists from the start). Alert expressions may return nothing (no alert fires)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bench.harness import HOST, Child, free_port, spawn, threads_poller_command
from config import Settings
from simulator import RunningSimulator
from tests.dashboard import ALERTS, queries
from tests.helpers.env import worker_env
from tests.helpers.waiting import finals, wait_until
from worker import enqueue_many

JOB = "threads-poller"
SCRAPE_S = 1
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval); at the
# short ranges of this test, 4 x the scrape interval.
RATE_INTERVAL = f"{4 * SCRAPE_S}s"


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:  # fails, never skips: scripts/test.sh installs Debian's prometheus
        pytest.fail(f"{name} is not installed: run scripts/test.sh (apt-get install prometheus)")
    return found


def api(port: int, path: str, **params: str) -> dict[str, Any]:
    url = f"http://{HOST}:{port}/api/v1/{path}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a bad query: 400 with the error in the body
        body = json.loads(exc.read())
    return body


async def aapi(port: int, path: str, **params: str) -> dict[str, Any]:
    return await asyncio.to_thread(api, port, path, **params)


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [binary("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_unit_tests_the_token_alerts() -> None:
    """deploy/prometheus/alerts_test.yml: the token expiry alert fires under 7 days, per
    account, and the refresh-failing one after 30 minutes of failures, not before."""
    done = subprocess.run(
        [binary("promtool"), "test", "rules", str(ALERTS.with_name("alerts_test.yml"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


async def test_every_query_runs_on_a_real_prometheus(
    tmp_path: Path,
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
) -> None:
    worker_port, serve_metrics, serve_port, prom_port = (free_port() for _ in range(4))
    env = worker_env(project_env, settings, METRICS_PORT=str(worker_port))
    worker_instance = f"{HOST}:{worker_port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": f"{SCRAPE_S}s",
                    "evaluation_interval": f"{SCRAPE_S}s",
                },
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [
                            {"targets": [worker_instance, f"{HOST}:{serve_metrics}"]}
                        ],
                    }
                ],
            }
        )
    )
    children: list[Child] = []
    try:
        children.append(
            spawn(
                "serve",
                [*threads_poller_command(), "serve"],
                tmp_path / "serve.log",
                env=dict(
                    env,
                    HTTP_HOST=HOST,
                    HTTP_PORT=str(serve_port),
                    SERVE_METRICS_PORT=str(serve_metrics),
                    API_KEYS="k" * 32,
                ),
            )
        )
        children.append(
            spawn("worker", [*threads_poller_command(), "worker"], tmp_path / "worker.log", env=env)
        )
        children.append(
            spawn(
                "prometheus",
                [
                    binary("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={HOST}:{prom_port}",
                ],
                tmp_path / "prometheus.log",
            )
        )
        # Some real checks, so that counters and histograms move while Prometheus watches.
        sim.state.set_script("2301*", ["IN_PROGRESS", "FINISHED"])
        ids = [str(23010 + i) for i in range(5)]
        await enqueue_many(redis, ids, settings=settings)

        async def both_up() -> bool:
            for child in children:
                assert child.alive(), f"{child.name} died:\n{child.tail()}"
            try:
                got = await aapi(prom_port, "query", query=f'up{{job="{JOB}"}} == 1')
            except OSError:
                return False
            return len(got.get("data", {}).get("result", [])) == 2

        await wait_until(both_up, timeout=30, interval=0.2)
        await finals(redis, settings, ids, timeout=20)
        # Enough scrapes for every range of RATE_INTERVAL to hold two samples or more, and for
        # serve's 5-second sample of Redis to have seen the worker's heartbeat.
        await asyncio.sleep(4 * SCRAPE_S + 2)

        async def workers_alive() -> bool:
            got = await aapi(prom_port, "query", query="threads_poller_workers_alive")
            return any(r["value"][1] == "1" for r in got["data"]["result"])

        await wait_until(workers_alive, timeout=15, interval=0.5)

        failures = []
        for query in queries():
            expr = query.substituted(rate_interval=RATE_INTERVAL, job=JOB, instance=worker_instance)
            got = await aapi(prom_port, "query", query=expr, time=str(time.time()))
            if got["status"] != "success":
                failures.append(f"{query.name}: {got.get('error')} ({expr})")
            elif not got["data"]["result"]:
                failures.append(f"{query.name}: no series ({expr})")
        for rule in await rule_expressions(prom_port):
            got = await aapi(prom_port, "query", query=rule)
            if got["status"] != "success":
                failures.append(f"alert {rule}: {got.get('error')}")
        assert failures == [], "\n".join(failures)

        # Prometheus evaluated the rules themselves too, without an error.
        groups = (await aapi(prom_port, "rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert rules and all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
        ]
    finally:
        for child in reversed(children):
            await child.astop(20)


async def rule_expressions(prom_port: int) -> list[str]:
    """The alert rules' expressions as Prometheus loaded them from alerts.yml."""
    groups = (await aapi(prom_port, "rules"))["data"]["groups"]
    exprs = [str(r["query"]) for g in groups for r in g["rules"]]
    assert len(exprs) >= 7
    return exprs
