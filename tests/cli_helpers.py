"""Running the installed ``threads-poller`` command the way a user would (integration and system
tests; the command itself: bench.harness.threads_poller_command)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.harness import threads_poller_command
from config import Settings
from tests.conftest import TEST_TOKEN


async def run_cli(
    *args: str,
    env: dict[str, str],
    stdin: bytes | None = None,
    timeout: float = 30,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *threads_poller_command(),
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start_worker(env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    log = log_path.open("ab")
    return await asyncio.create_subprocess_exec(
        *threads_poller_command(), "worker", env=env, stdout=log, stderr=log
    )


def worker_env(project_env: dict[str, str], settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a ``threads-poller`` process that works like ``settings``."""
    env = dict(
        project_env,
        THREADS_API_BASE_URL=settings.threads_api_base_url,
        THREADS_ACCESS_TOKEN=TEST_TOKEN,
        POLL_INTERVAL_SECONDS=str(settings.poll_interval_seconds),
        POLL_MAX_SECONDS=str(settings.poll_max_seconds),
        HTTP_TIMEOUT_SECONDS="1",
        JOB_TIMEOUT_SECONDS="5",
    )
    env.update(overrides)
    return env
