"""The worker processes of a fault run, and what they run against.

``WorkerPool`` starts real ``threads-poller worker`` subprocesses (configured through the
environment only, each with its own log), waits until they beat, freezes (SIGSTOP) and resumes
them, SIGKILLs them, restarts the one in a slot (the long run's supervisor) and stops them all.
``settings_of`` is the workers' settings exactly; ``retrying`` rides a Redis call out through a
Redis restart.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bench.harness import threads_poller_command
from config import Settings, load_settings
from worker.store.keys import Keys

T = TypeVar("T")


def settings_of(env: Mapping[str, str]) -> Settings:
    """The settings a worker started with ``env`` runs with (no .env file)."""
    fields = {name.upper(): name for name in Settings.model_fields}
    return load_settings(_env_file=None, **{fields[k]: v for k, v in env.items() if k in fields})


async def retrying(fn: Callable[[], Awaitable[T]], *, seconds: float = 60.0) -> T:
    """Redis calls of the producer and the monitor ride out the Redis restart."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await fn()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # BusyLoadingError (Redis replaying its AOF) is a ConnectionError too.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass
class WorkerProc:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def holds(self, lock_value: str) -> bool:
        """True if an in-progress lock value names this process (host:pid:... or host-pid-...)."""
        return re.search(rf"(?<![0-9]){self.pid}(?![0-9])", lock_value) is not None


class WorkerPool:
    """Worker processes started with one environment (plus a process's own extra), logging to
    ``logdir``; run in ``cwd`` (default ``logdir``: no stray .env file can be read).

    ``workers``: every process started, in order. The long run keeps N of them in slots
    (``start_slots``): a slot whose process is SIGKILLed (``kill_and_restart``) or exits on its
    own (``reap``, as a supervisor would) gets a new one."""

    def __init__(self, env: Mapping[str, str], logdir: Path, *, cwd: Path | None = None) -> None:
        self.env = dict(env)
        self.logdir = logdir
        self.cwd = cwd or logdir
        self.workers: list[WorkerProc] = []
        self.slots: list[WorkerProc | None] = []
        self.starts: list[int] = []  # per slot
        self.kills = 0
        self.unexpected_exits: list[tuple[int, int]] = []  # (slot, exit code)

    @property
    def logs(self) -> list[Path]:
        return [w.log for w in self.workers]

    async def start(
        self, extra_env: Mapping[str, str] | None = None, *, name: str | None = None
    ) -> WorkerProc:
        name = name or f"worker{len(self.workers) + 1}"
        env = dict(self.env)
        env.update(extra_env or {})
        path = self.logdir / f"{name}.log"
        with path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *threads_poller_command(),
                "worker",
                env=env,
                cwd=self.cwd,
                stdout=log,
                stderr=log,
            )
        worker = WorkerProc(name, proc, path)
        self.workers.append(worker)
        return worker

    async def wait_ready(
        self, redis: Redis, keys: Keys, workers: Sequence[WorkerProc], wait_s: float = 30
    ) -> None:
        """Until each has beaten once (README: ``{prefix}:workers``, names host-pid-random)."""
        deadline = time.monotonic() + wait_s
        while True:
            names = [
                n.decode() if isinstance(n, bytes) else str(n)
                for n in await redis.zrange(keys.workers, 0, -1)
            ]
            if all(any(w.holds(n) for n in names) for w in workers):
                return
            dead = [w for w in workers if not w.alive]
            if dead or time.monotonic() > deadline:
                tail = dead[0].log.read_text(errors="replace")[-2000:] if dead else ""
                raise RuntimeError(f"worker(s) did not start: {tail}")
            await asyncio.sleep(0.05)

    def freeze(self, worker: WorkerProc) -> None:
        worker.proc.send_signal(signal.SIGSTOP)
        worker.stopped = True

    def resume(self, worker: WorkerProc) -> None:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stopped = False

    async def kill(self, worker: WorkerProc) -> None:
        """SIGKILL, and wait for it to be gone."""
        worker.proc.send_signal(signal.SIGKILL)
        await worker.proc.wait()
        self.kills += 1

    async def stop(self, grace: float) -> None:
        """SIGTERM to every live worker (a frozen one is resumed first: it could not act on
        it), SIGKILL to any still running after ``grace`` seconds."""
        live = [w for w in self.workers if w.alive]
        for w in live:
            if w.stopped:
                self.resume(w)
            w.proc.send_signal(signal.SIGTERM)
        for w in live:
            try:
                await asyncio.wait_for(w.proc.wait(), grace)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()

    # --- slots (the long run) ---

    async def start_slot(self, slot: int) -> WorkerProc:
        while len(self.slots) <= slot:
            self.slots.append(None)
            self.starts.append(0)
        self.starts[slot] += 1
        worker = await self.start(name=f"worker{slot}-{self.starts[slot]}")
        self.slots[slot] = worker
        return worker

    async def start_slots(self, n: int) -> None:
        for slot in range(n):
            await self.start_slot(slot)

    async def kill_and_restart(self, slot: int) -> None:
        worker = self.slots[slot]
        if worker is not None and worker.alive:
            await self.kill(worker)
        await self.start_slot(slot)

    async def reap(self) -> None:
        """Restart any worker that exited on its own (as a supervisor would), and count it."""
        for slot, worker in enumerate(self.slots):
            if worker is not None and worker.proc.returncode is not None:
                self.unexpected_exits.append((slot, worker.proc.returncode))
                await self.start_slot(slot)
