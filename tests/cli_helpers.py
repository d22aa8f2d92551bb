"""Running the installed ``threads-poller`` command the way a user would."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "threads-poller"
    if script.exists():
        return [str(script)]
    found = shutil.which("threads-poller")
    return [found] if found else [sys.executable, "-m", "worker.cli"]


async def run_cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cli_command(),
        *args,
        env=env,
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
        *cli_command(), "worker", env=env, stdout=log, stderr=log
    )
