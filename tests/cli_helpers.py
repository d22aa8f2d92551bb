"""Running the installed ``threads-poller`` command the way a user would (integration and system
tests; the command itself: bench.harness.threads_poller_command; its environment:
tests/helpers/env.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.harness import threads_poller_command


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
