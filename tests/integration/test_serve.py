"""Issue 13: ``threads-poller serve`` as its own process next to a real worker process, fed and
read over HTTP the way a client in another language would (urllib, no Python API); the
operator's commands of the CLI (inflight, failures, accounts, dead-letters, cancel)."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bench.harness import Child, free_port, spawn, threads_poller_command
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from tests.web_helpers import RO_KEY, RW_KEY
from worker.store.keys import Keys


def http(
    method: str, url: str, *, key: str | None = RW_KEY, body: Any = None, timeout: float = 10
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback only
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


async def ahttp(method: str, url: str, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(http, method, url, **kw)


def serve_env(env: dict[str, str], port: int, **more: str) -> dict[str, str]:
    return dict(
        env,
        HTTP_HOST="127.0.0.1",
        HTTP_PORT=str(port),
        API_KEYS=RW_KEY,
        API_READ_KEYS=RO_KEY,
        **more,
    )


async def started(child: Child, base: str) -> None:
    async def up() -> bool:
        assert child.alive(), child.tail()
        try:
            status, _ = await ahttp("GET", base + "/healthz", key=None, timeout=1)
        except OSError:
            return False
        return status == 200

    await wait_until(up, timeout=20)


@pytest.fixture
async def processes(
    tmp_path: Path,
    redis: Redis,  # an empty Redis (the fixture flushes it)
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
) -> AsyncIterator[tuple[str, Child, Child, int]]:
    settings = settings.model_copy(update={"poll_max_seconds": 30.0})
    env = worker_env(project_env, settings)
    port, metrics_port = free_port(), free_port()
    api = spawn(
        "serve",
        [*threads_poller_command(), "serve"],
        tmp_path / "serve.log",
        env=serve_env(env, port, SERVE_METRICS_PORT=str(metrics_port)),
    )
    worker = spawn(
        "worker", [*threads_poller_command(), "worker"], tmp_path / "worker.log", env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await started(api, base)
        yield base, api, worker, metrics_port
    finally:
        for child in (api, worker):
            await child.astop(20)


async def test_a_client_in_any_language_feeds_and_reads_over_http(
    processes: tuple[str, Child, Child, int], sim: RunningSimulator, tmp_path: Path
) -> None:
    base, api, _worker, metrics_port = processes
    sim.state.set_script("13201", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("13202", ["ERROR:INVALID_VIDEO_FORMAT"])
    status, body = await ahttp(
        "POST", base + "/v1/containers", body={"container_ids": ["13201", "13202"]}
    )
    assert status == 202 and [o["outcome"] for o in body["outcomes"]] == ["enqueued", "enqueued"]
    status, body = await ahttp("GET", base + "/v1/containers/13201?wait=20", timeout=30)
    assert status == 200 and body["status"] == "FINISHED"
    status, body = await ahttp("GET", base + "/v1/containers/13202?wait=20", timeout=30)
    assert status == 200 and body["status"] == "ERROR" and body["error_explanation"]
    status, body = await ahttp("GET", base + "/v1/failures?since=10m")
    assert [f["container_id"] for f in body["items"]] == ["13202"]
    assert (await ahttp("GET", base + "/v1/failures", key=None))[0] == 401
    assert (await ahttp("POST", base + "/v1/containers", key=RO_KEY, body={"container_id": "1"}))[
        0
    ] == 403

    async def worker_seen() -> bool:
        return len((await ahttp("GET", base + "/v1/workers"))[1]["items"]) == 1

    await wait_until(worker_seen, timeout=15)
    # The deployment's gauges come from serve, once; it samples Redis every few seconds, so
    # the worker shows there at the next sample.
    text = ""
    values: dict[str, float] = {}

    async def gauge_sees_the_worker() -> bool:
        nonlocal text, values
        _, text = await ahttp("GET", f"http://127.0.0.1:{metrics_port}/metrics", key=None)
        values = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.labels
        }
        return values.get("threads_poller_workers_alive") == 1

    await wait_until(gauge_sees_the_worker, timeout=15)
    assert "threads_poller_containers_in_flight" in values
    assert any(
        s.name == "threads_poller_http_requests_total" and s.labels["route"] == "/v1/containers"
        for f in text_string_to_metric_families(text)
        for s in f.samples
    )

    # SIGTERM while an event stream is open: the stream ends, the process exits 0 at once.
    reader = asyncio.create_task(
        ahttp("GET", base + "/v1/events", timeout=30)  # reads until the server closes it
    )
    await asyncio.sleep(0.5)
    api.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(asyncio.to_thread(api.proc.wait), 15)
    assert code == 0, api.tail()
    status, text = await asyncio.wait_for(reader, 10)
    assert status == 200 and "retry: 2000" in text
    lines = [
        json.loads(line)
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if line.startswith("{")
    ]
    access = [x for x in lines if x["logger"] == "threads_poller.access"]
    assert any(
        x["path"] == "/v1/containers" and x["status"] == 202 and x["request_id"] for x in access
    )
    assert any(x["msg"].startswith("api listening on http://127.0.0.1:") for x in lines)
    assert any(x["msg"] == "api stopped" for x in lines)
    assert RW_KEY not in (tmp_path / "serve.log").read_text()


async def test_serve_refuses_to_start_exposed_without_a_key(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = dict(worker_env(project_env, settings), HTTP_HOST="0.0.0.0", HTTP_PORT=str(free_port()))
    code, _, err = await run_cli("serve", env=env)
    assert code == 2 and "HTTP_HOST" in err and "API_KEYS" in err
    code, _, err = await run_cli("serve", env=dict(env, API_KEYS="short"))
    assert code == 2 and "API_KEYS: a key must be at least 16 characters" in err
    code, _, err = await run_cli("serve", env=dict(env, API_KEYS_FILE="/nonexistent/keys"))
    assert code == 2 and "API_KEYS_FILE" in err


async def test_cli_parity(
    redis: Redis, settings: Settings, sim: RunningSimulator, project_env: dict[str, str], keys: Keys
) -> None:
    from tests.helpers.worker import running_worker
    from worker import PollerClient

    settings = settings.model_copy(update={"poll_max_seconds": 30.0})
    env = worker_env(project_env, settings)
    sim.state.set_script("13301", ["IN_PROGRESS"])
    sim.state.set_script("13302", ["ERROR:FAILED_PROCESSING_VIDEO"])
    sim.state.set_script("13303", ["throttle"])
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue_many(["13301", "13302"])
    await client.enqueue("13303", account="555")
    await redis.xadd(
        keys.dead_letters,
        {"entry_id": "1-1", "reason": "test", "fields": '{"container_id": "13304"}'},
    )
    async with running_worker(settings.model_copy(update={"throttle_backoff_seconds": 60.0})):
        assert (await client.wait("13302", timeout=10)) is not None

        async def throttled() -> bool:
            raw = await redis.hget(keys.account("555"), "throttled_until")  # type: ignore[misc]
            return raw is not None

        await wait_until(throttled, timeout=10)

        code, out, err = await run_cli("inflight", env=env)
        assert code == 0, err
        assert "13301" in out and "in flight" in out.splitlines()[0]
        code, out, _ = await run_cli("inflight", "--json", env=env)
        assert {json.loads(line)["container_id"] for line in out.splitlines()} >= {"13301", "13303"}

        code, out, _ = await run_cli("failures", "--since", "10m", env=env)
        assert code == 0 and "13302  ERROR" in out and "FAILED_PROCESSING_VIDEO" in out
        code, _, err = await run_cli("failures", "--since", "forever", env=env)
        assert code == 2 and "--since" in err

        code, out, _ = await run_cli("accounts", env=env)
        assert code == 0 and "555  THROTTLED pause left" in out
        code, out, _ = await run_cli("accounts", "--json", env=env)
        row = next(json.loads(line) for line in out.splitlines() if '"555"' in line)
        assert row["throttled"] and row["pause_left_s"] > 0

        code, out, _ = await run_cli("cancel", "13301", "--reason", "from the shell", env=env)
        assert code == 0 and "13301  cancelled" in out
        code, out, _ = await run_cli("cancel", "13301", env=env)
        assert code == 1 and "already final (CANCELLED)" in out
        code, _, _ = await run_cli("cancel", "nope", env=env)
        assert code == 2
        r = await client.get("13301")
        assert r is not None and r.last_error == "cancelled: from the shell"

        code, out, _ = await run_cli("dead-letters", "list", env=env)
        assert code == 0 and "intake" in out and "container_id=13304" in out
        letter = out.split()[1]
        code, out, _ = await run_cli("dead-letters", "replay", letter, env=env)
        assert code == 0 and "replayed" in out
        r4 = await client.wait("13304", timeout=10)
        assert r4 is not None
        code, out, _ = await run_cli("dead-letters", "discard", letter, "--kind", "intake", env=env)
        assert code == 1 and "gone" in out
        code, _, err = await run_cli("dead-letters", "replay", env=env)
        assert code == 2 and "ID" in err
