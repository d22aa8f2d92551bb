"""SIGTERM with checks in flight: the worker exits cleanly and no container is lost."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from redis.asyncio import Redis

from bench.harness import free_port
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli, start_worker
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from worker import enqueue_many, get_result
from worker.store.keys import Keys

N = 40


def shutdown_env(project_env: dict[str, str], settings: Settings) -> dict[str, str]:
    return worker_env(
        project_env,
        settings,
        POLL_INTERVAL_SECONDS="0.5",
        POLL_MAX_SECONDS="10",
        HTTP_TIMEOUT_SECONDS="2",
    )


async def test_sigterm_loses_nothing(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ids = [str(20_000 + i) for i in range(N)]
    sim.state.set_script("200*", ["slow:0.4:IN_PROGRESS", "slow:0.4:IN_PROGRESS", "FINISHED"])
    settings = settings.model_copy(update={"poll_max_seconds": 10.0})
    await enqueue_many(redis, ids, settings=settings)
    env = shutdown_env(project_env, settings)

    first = await start_worker(env, tmp_path / "w1.log")
    # Wait until checks are really in flight (the simulator holds each for 0.4 s).
    await wait_until(lambda: sim.state.total_calls >= N // 2, timeout=20)
    first.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(first.wait(), 15)
    assert code == 0, (tmp_path / "w1.log").read_text()[-2000:]
    log = (tmp_path / "w1.log").read_text()
    assert "shutdown on SIGTERM" in log

    async def finals() -> int:
        results = [await get_result(redis, cid, settings=settings) for cid in ids]
        return sum(1 for r in results if r is not None and r.final)

    done_before = await finals()
    assert done_before < N  # the signal really hit a run with work left

    second = await start_worker(env, tmp_path / "w2.log")
    try:
        await wait_until(lambda: finals_equal(finals, N), timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 15)
    results = [await get_result(redis, cid, settings=settings) for cid in ids]
    assert all(r is not None and r.status == "FINISHED" for r in results), [
        (r.container_id, r.status, r.checks, r.last_error)
        for r in results
        if r and r.status != "FINISHED"
    ]
    events = await redis.xrange(keys.events)
    assert sorted(f[b"container_id"].decode() for _, f in events) == sorted(ids)  # once each
    # Checks lost to the shutdown are re-run, so a few extra calls are allowed, never a 7th+.
    assert max(sim.state.calls_for(cid).count for cid in ids) <= 4


async def finals_equal(finals: object, n: int) -> bool:
    return await finals() == n  # type: ignore[operator,no-any-return]


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "the worker said nothing"
    assert "Traceback" not in text
    return [json.loads(line) for line in lines]  # every line is one JSON log record


async def test_start_with_redis_down_gives_up_in_bounded_time_and_says_so(
    project_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    env = worker_env(
        project_env,
        settings,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        REDIS_STARTUP_TIMEOUT_SECONDS="6",
        LOG_FORMAT="json",
    )
    started = time.monotonic()
    code, out, err = await run_cli("worker", env=env, timeout=30)
    elapsed = time.monotonic() - started
    records = _json_lines(err)
    assert code == 1 and out == ""
    assert 3 < elapsed < 15, elapsed
    attempts = [r for r in records if str(r["msg"]).startswith("cannot reach Redis (attempt")]
    assert len(attempts) >= 2 and "giving up in" in str(attempts[0]["msg"])
    assert str(attempts[-1]["msg"]).endswith("giving up")
    assert records[-1]["msg"] == "worker stopped: cannot reach Redis"
    assert records[-1]["level"] == "error" and "Connection refused" in str(records[-1]["error"])


async def test_sigterm_while_redis_is_down_exits_0_at_once(
    project_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    """`docker stop` of a worker still waiting for Redis: exit 0, JSON lines, no traceback."""
    env = worker_env(
        project_env, settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", LOG_FORMAT="json"
    )
    log_path = tmp_path / "worker.log"
    proc = await start_worker(env, log_path)
    await wait_until(lambda: _said(log_path, "cannot reach Redis (attempt 1)"), timeout=20)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0 and time.monotonic() - stopped < 5
    records = _json_lines(log_path.read_text())
    assert records[-1]["msg"] == "worker stopped before Redis answered"


def _said(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()
