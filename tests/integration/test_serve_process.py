"""The ``threads-poller serve`` and ``worker`` processes at their doors: half-sent connections
cannot shut out a key holder; no core dumps; /metrics on loopback and on its own port."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from pathlib import Path

from bench.harness import HOST, Child, free_port, spawn, threads_poller_command
from config import Settings
from simulator import RunningSimulator
from tests.helpers.env import worker_env
from tests.helpers.waiting import wait_until
from tests.web_helpers import RW_KEY

# What many hosts give a process by default; the half-sent connections exceed it.
NOFILE = 1024
HALF_SENT = 1100


def limited() -> None:
    """In the child: a common open-files limit, and core dumps allowed as far as the hard limit
    lets (so that a process that leaves them on shows it)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError("no core limit")


async def get(port: int, path: str, *, key: str | None, timeout: float) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Connection: close\r\n\r\n"
        writer.write(head.encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1])
    finally:
        writer.close()


def serve_process(
    tmp_path: Path, env: dict[str, str], port: int, **more: str
) -> tuple[Child, dict[str, str]]:
    env = dict(env, HTTP_HOST=HOST, HTTP_PORT=str(port), API_KEYS=RW_KEY, **more)
    child = spawn(
        "serve",
        [*threads_poller_command(), "serve"],
        tmp_path / "serve.log",
        env=env,
        preexec_fn=limited,
    )
    return child, env


async def test_half_sent_connections_cannot_shut_out_a_key_holder(
    tmp_path: Path, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 3 * HALF_SENT, "this test needs the file descriptors of its own sockets"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    child, _ = serve_process(
        tmp_path, worker_env(project_env, settings), port, API_IDLE_TIMEOUT_SECONDS="3"
    )
    held: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    try:

        async def up() -> bool:
            assert child.alive(), child.tail()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                return await get(port, "/healthz", key=None, timeout=1) == 200
            return False

        await wait_until(up, timeout=20)

        async def half_sent() -> None:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
                # Headers begun, never finished.
                writer.write(b"GET /v1/workers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                held.append(writer)
                readers.append(reader)

        for i in range(0, HALF_SENT, 100):
            await asyncio.gather(*(half_sent() for _ in range(min(100, HALF_SENT - i))))
        assert len(held) >= 1000, len(held)
        t0 = time.monotonic()
        status = await get(port, "/v1/workers", key=RW_KEY, timeout=5)
        assert status == 200
        assert time.monotonic() - t0 < 5
        assert child.alive(), child.tail()
        # And the half-sent ones are closed once API_IDLE_TIMEOUT_SECONDS have passed.

        async def all_closed() -> bool:
            return all(r.at_eof() or r.exception() is not None for r in readers)

        async def drain() -> None:
            for r in readers:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(r.read(1), 0.001)

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not await all_closed():
            await drain()
            await asyncio.sleep(0.2)
        assert await all_closed(), sum(not r.at_eof() for r in readers)
    finally:
        for w in held:
            w.close()
        await child.astop(20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_no_core_dumps_and_metrics_on_loopback(
    tmp_path: Path, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings)
    port, metrics = free_port(), free_port()
    api, _ = serve_process(tmp_path, dict(env, METRICS_PORT=str(metrics)), port)
    worker = spawn(
        "worker",
        [*threads_poller_command(), "worker"],
        tmp_path / "worker.log",
        env=dict(env, METRICS_PORT=str(metrics)),
        preexec_fn=limited,
    )
    try:
        serve_log, worker_log = tmp_path / "serve.log", tmp_path / "worker.log"

        def listening() -> bool:
            return (
                "/metrics on" in serve_log.read_text() and "/metrics on" in worker_log.read_text()
            )

        await wait_until(listening, timeout=20)
        assert core_limit(api.pid) == "0 0"
        assert core_limit(worker.pid) == "0 0"
        # Loopback unless METRICS_HOST says otherwise; the worker on METRICS_PORT, serve on the
        # next port (before, both wanted METRICS_PORT and the second one got none).
        assert f"/metrics on 127.0.0.1:{metrics}" in worker_log.read_text()
        assert f"/metrics on 127.0.0.1:{metrics + 1}" in serve_log.read_text()
    finally:
        for child in (api, worker):
            await child.astop(20)
