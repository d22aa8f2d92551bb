"""The access token (and the webhook secret) never reach a log line, anything stored in Redis
(results, events, dead letters of both kinds), a webhook request, the metrics, or the output of
``health`` and ``status``. The grep is tests/leaks.py, for the HTTP API's doors too."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bench.harness import free_port
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli, start_worker
from tests.helpers.env import worker_env
from tests.helpers.receivers import webhook_receiver
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import wait_until
from tests.leaks import assert_no_leaks, dump_redis, http_doors
from worker import enqueue_many, get_result

OTHER_TOKEN = "EAAotherACCOUNTtoken9876543210zyx"
WEBHOOK_SECRET = "whsec-never-shown-0123456789"


@pytest.mark.parametrize("auth_mode", ["query", "header"])
async def test_token_absent_from_logs_and_redis(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
    auth_mode: str,
) -> None:
    scripts = {
        "3001": ["IN_PROGRESS", "FINISHED"],
        "3002": ["token_expired"],
        "3003": ["drop", "drop", "drop", "garbage", "ERROR:UNKNOWN"],
        "3004": ["500", "html", "notfound"],
        "3005": ["slow:3:FINISHED", "permission"],
        "3006": ["throttle", "429", "IN_PROGRESS", "FINISHED"],
    }
    for cid, steps in scripts.items():
        sim.state.set_script(cid, steps)
    # The window is fixed at enqueue: long enough for the worker process to start.
    settings = settings.model_copy(
        update={
            "poll_max_seconds": 10.0,
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_allowed_hosts": "127.0.0.1",
        }
    )
    async with webhook_receiver([200]) as good, webhook_receiver([500]) as bad:
        doors = await run_with_webhooks(
            redis, settings, scripts, project_env, tmp_path, auth_mode, good.url, bad.url
        )
        requests = b"\n".join(
            body + repr(headers).encode() for body, headers in [*good.got, *bad.got]
        )
    assert good.got and bad.got  # the deliveries were made
    log = (tmp_path / "worker.log").read_text()
    assert "final state" in log and "3002" in log  # the log did record the run
    assert "access token rejected" in log and "555" in log
    assert "intake entry dead-lettered" in log and "webhook dead-lettered" in log
    doors |= {"worker log": log, "redis": await dump_redis(redis), "webhook requests": requests}
    assert b"threads_poller_checks_total" in doors["metrics"]
    assert_no_leaks(doors, [TEST_TOKEN, OTHER_TOKEN, WEBHOOK_SECRET])
    # The simulator did receive the token the way it was asked to.
    r3001 = await get_result(redis, "3001", settings=settings)
    assert sim.state.calls_for("3001").count == 2, r3001
    failed = await get_result(redis, "3002", settings=settings)
    assert failed is not None and failed.status == "FAILED" and failed.last_error_code == 190


async def run_with_webhooks(
    redis: Redis,
    settings: Settings,
    scripts: dict[str, list[str]],
    project_env: dict[str, str],
    tmp_path: Path,
    auth_mode: str,
    good_url: str,
    bad_url: str,
) -> dict[str, bytes | str]:
    """Run the worker process through it all; the doors that need it running, read then."""
    # The expired token belongs to its own account, so it fails only that account's checks.
    plain = [c for c in scripts if c not in ("3001", "3002", "3006")]
    await enqueue_many(redis, plain, settings=settings)
    await enqueue_many(redis, ["3001"], webhook_url=good_url, settings=settings)
    await enqueue_many(redis, ["3006"], webhook_url=bad_url, settings=settings)
    await enqueue_many(redis, ["3002"], account="555", settings=settings)
    intake = f"{settings.key_prefix}:intake"
    # Tokens pasted where they do not belong: dead letters must not keep them.
    for junk in (
        {"container_id": "not-a-number"},
        {"container_id": TEST_TOKEN},
        {"container_id": "3010", "access_token": TEST_TOKEN},
        {"container_id": "3011", "account": OTHER_TOKEN},
        {
            "container_id": "3012",
            "webhook_url": f"https://h.example.com/?access_token={TEST_TOKEN}",
        },
        {"container_id": "3013", "note": f"Bearer {OTHER_TOKEN}"},
    ):
        await redis.xadd(intake, junk)  # type: ignore[arg-type]
    metrics_port = free_port()
    env = worker_env(
        project_env,
        settings,
        THREADS_ACCESS_TOKEN_555=OTHER_TOKEN,
        THREADS_AUTH_MODE=auth_mode,
        POLL_INTERVAL_SECONDS="0.3",
        POLL_MAX_SECONDS="10",
        LOG_LEVEL="DEBUG",
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        WEBHOOK_BACKOFF_SECONDS="0.1",
        WEBHOOK_MAX_ATTEMPTS="2",
        METRICS_PORT=str(metrics_port),
    )
    log_path = tmp_path / "worker.log"
    proc = await start_worker(env, log_path)
    try:

        async def all_final() -> bool:
            for cid in scripts:
                r = await get_result(redis, cid, settings=settings)
                if r is None or not r.final:
                    return False
            hooks = [await get_result(redis, c, settings=settings) for c in ("3001", "3006")]
            dead = await redis.xlen(f"{settings.key_prefix}:intake:dead")
            return dead == 6 and all(h and h.webhook_status in ("delivered", "dead") for h in hooks)

        await wait_until(all_final, timeout=30)
        doors: dict[str, bytes | str] = dict(
            await http_doors({"metrics": f"http://127.0.0.1:{metrics_port}/metrics"})
        )
        cli_env = dict(project_env, KEY_PREFIX=settings.key_prefix)
        code, out, err = await run_cli("health", "--any", env=cli_env)
        assert code == 0, err
        doors["health"] = out + err
        _, out, err = await run_cli("status", *scripts, "--json", env=cli_env)
        doors["status"] = out + err
        return doors
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
