"""Schemathesis against a real ``threads-poller serve``: every operation of ``/v1/openapi.json``,
generated requests (valid and invalid), every check Schemathesis has, nothing found.

The server runs as a user runs it (its own process, a real redis-server, a worker polling the
simulator, so containers reach final states and webhooks are delivered), with read-write and
read-only keys. The run is bounded (``MAX_EXAMPLES`` per operation and phase) and reproducible
(a fixed seed, Hypothesis derandomized). Generated webhook URLs go to this test's own receiver on
loopback, allowlisted (tests/schemathesis_hooks.py). ``API_MAX_WAIT_SECONDS`` is small and the
event stream is read for ``STREAM_SECONDS``: a run is about its requests, not its waits.

A failure names each finding with a curl command that reproduces it (the run's output is in the
assertion message, its NDJSON report in the test's tmp_path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import HOST, Child, free_port, spawn, threads_poller_command
from config import Settings
from simulator import RunningSimulator
from tests.helpers.env import worker_env
from tests.helpers.receivers import Receiver, webhook_receiver
from tests.helpers.waiting import wait_until
from tests.integration.test_serve_process import get
from tests.schemathesis_hooks import RECEIVER_ENV
from tests.web_helpers import RO_KEY, RW_KEY

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 20
STREAM_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 5.0
WEBHOOK_SECRET = "schemathesis-webhook-secret-0123456789"
# Every operation of the document but GET /v1/openapi.json, which Schemathesis reads and leaves
# out of its run.
READS = {
    "GET /healthz",
    "GET /v1/containers/{container_id}",
    "GET /v1/events",
    "GET /v1/finals",
    "GET /v1/failures",
    "GET /v1/inflight",
    "GET /v1/accounts",
    "GET /v1/workers",
    "GET /v1/overview",
    "GET /v1/dead-letters/{kind}",
}
WRITES = {
    "POST /v1/containers",
    "POST /v1/containers/{container_id}/cancel",
    "POST /v1/dead-letters/{kind}/{letter_id}/replay",
    "DELETE /v1/dead-letters/{kind}/{letter_id}",
}
DOCUMENTED = READS | WRITES


@dataclass
class Run:
    rc: int
    output: str
    cases: int
    # "METHOD /path" -> the statuses of its answers.
    statuses: dict[str, Counter[int]]
    seconds: float


def config_file(tmp_path: Path) -> Path:
    """What the command line cannot say per operation: the event stream is read this long."""
    path = tmp_path / "schemathesis.toml"
    path.write_text(
        f'[[operations]]\ninclude-path = "/v1/events"\nrequest-timeout = {STREAM_SECONDS}\n'
    )
    return path


def read_report(report: Path) -> tuple[int, dict[str, Counter[int]]]:
    cases = 0
    statuses: dict[str, Counter[int]] = {}
    for line in report.read_text().splitlines():
        event = json.loads(line)
        done = event.get("ScenarioFinished")
        if not done or not done.get("recorder"):
            continue
        recorder = done["recorder"]
        cases += len(recorder.get("cases", ()))
        for case_id, interaction in recorder.get("interactions", {}).items():
            case = recorder["cases"][case_id]["value"]
            response = interaction.get("response")
            if response is not None:
                label = f"{case['method']} {case['path']}"
                statuses.setdefault(label, Counter())[response["status_code"]] += 1
    return cases, statuses


async def schemathesis(tmp_path: Path, base: str, key: str, name: str, hook_url: str) -> Run:
    reports = tmp_path / f"report-{name}"
    cmd = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(config_file(tmp_path)),
        "run",
        f"{base}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        # Derandomized (the same cases every run; no seed, no example database).
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        str(REQUEST_TIMEOUT_SECONDS),
        "--no-color",
        "--report",
        "ndjson",
        "--report-dir",
        str(reports),
    ]
    env = dict(
        os.environ,
        SCHEMATHESIS_HOOKS="tests.schemathesis_hooks",
        PYTHONPATH=str(ROOT),
        **{RECEIVER_ENV: hook_url},
    )
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    seconds = time.monotonic() - t0
    assert proc.returncode is not None
    output = out.decode(errors="replace")
    (tmp_path / f"schemathesis-{name}.txt").write_text(output)
    found = sorted(reports.glob("*.ndjson"))
    assert found, output[-3000:]
    cases, statuses = read_report(found[-1])
    print(f"schemathesis ({name}): {cases} cases in {seconds:.1f}s")
    return Run(proc.returncode, output, cases, statuses, seconds)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, settings: Settings, project_env: dict[str, str], hook: Receiver
) -> AsyncIterator[str]:
    """``serve`` and a ``worker`` on one Redis; the API's base URL."""
    port = free_port()
    env = worker_env(
        project_env,
        settings,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOWED_HOSTS=HOST,
        WEBHOOK_RETRY_SCHEDULE="0.2",
        WEBHOOK_MAX_ATTEMPTS="2",
        HTTP_HOST=HOST,
        HTTP_PORT=str(port),
        API_KEYS=RW_KEY,
        API_READ_KEYS=RO_KEY,
        API_MAX_WAIT_SECONDS="1",
    )
    children: list[Child] = []
    try:
        for name in ("worker", "serve"):
            cmd = [*threads_poller_command(), name]
            children.append(spawn(name, cmd, tmp_path / f"{name}.log", env=env))
        serve = children[-1]

        async def up() -> bool:
            assert serve.alive(), serve.tail()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                return await get(port, "/healthz", key=None, timeout=1) == 200
            return False

        await wait_until(up, timeout=20)
        yield f"http://{HOST}:{port}"
        for child in children:
            assert child.alive(), child.tail()
    finally:
        for child in children:
            await child.astop(20)


def findings(run: Run) -> str:
    start = run.output.find("=== ERRORS")
    if start < 0:
        start = run.output.find("=== FAILURES")
    return run.output[start:] if start >= 0 else run.output[-4000:]


async def test_schemathesis_finds_nothing_with_a_read_write_key(
    tmp_path: Path, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    async with webhook_receiver() as hook, serving(tmp_path, settings, project_env, hook) as base:
        run = await schemathesis(tmp_path, base, RW_KEY, "rw", hook.url)
        assert run.rc == 0, findings(run)
        # Every operation was run, and writes were accepted: it is not all refusals.
        assert set(run.statuses) >= DOCUMENTED, sorted(run.statuses)
        assert run.statuses["POST /v1/containers"][202] > 0, run.statuses
        assert run.statuses["POST /v1/containers/{container_id}/cancel"][200] > 0
        assert run.cases > 500, run.cases
        # Generated webhooks were delivered, to the receiver only (the hook sent them there).
        await wait_until(lambda: hook.seen, timeout=15)
        assert {path for _, path in hook.seen} == {"/hook"}


async def test_schemathesis_finds_nothing_with_a_read_only_key(
    tmp_path: Path, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    async with webhook_receiver() as hook, serving(tmp_path, settings, project_env, hook) as base:
        run = await schemathesis(tmp_path, base, RO_KEY, "ro", hook.url)
        assert run.rc == 0, findings(run)
        # Writes: 403 (the document's answer to a read-only key), never done.
        for label in WRITES:
            answers = run.statuses[label]
            assert answers[403] > 0, (label, answers)
            assert not any(200 <= status < 300 for status in answers), (label, answers)
        assert run.statuses["GET /v1/overview"][200] > 0
        assert hook.seen == []
