"""The real worker in the test's own event loop (integration and system tests; as a process:
tests/cli_helpers.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from config import Settings
from tests.helpers.waiting import wait_until
from worker.runtime.app import PollerWorker, build_worker


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **kwargs: Any) -> AsyncIterator[PollerWorker]:
    """The real worker, in this event loop; stopped like SIGTERM stops it."""
    worker = build_worker(settings, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: worker.runner is not None or task.done(), timeout=10)
        yield worker
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
