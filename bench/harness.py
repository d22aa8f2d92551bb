"""The one helper for the processes of the bench scripts and the tests.

``bench/bench.py``, ``bench/fault_run.py``, ``bench/fault_matrix.py`` and ``tests/conftest.py``
start their processes, ports, Redis servers and simulators through this module only:

``free_port()``
    a TCP port on 127.0.0.1 that nothing listens on right now.
``spawn(name, cmd, log)`` -> ``Child``
    a subprocess whose stdout and stderr go to a log file; ``Child.stop()`` is SIGTERM, then
    SIGKILL after a timeout (``astop()`` the same in an event loop), ``Child.kill()`` SIGKILL;
    ``Child.tail()`` (``tail(path)``) the end of its log.
``RedisServer`` / ``start_redis()`` / ``stop_redis()``
    a private ``redis-server`` on 127.0.0.1: no RDB, ``noeviction``, AOF on request, extra
    arguments (``--replicaof ...``). Port and directory are fixed, so ``start()`` again after a
    crash (``kill()``, ``crash_and_restart()``) is the same server with its AOF replayed.
    ``start()``/``stop()`` block; ``astart()``/``astop()`` wait without blocking the event loop.
``redis_binary()``
    the ``redis-server`` executable (for a sentinel: ``spawn`` it with ``--sentinel``);
    ``RedisNotInstalledError`` without one.
``simulator_in_process(state)``
    the Threads API simulator in this event loop, on a free port (``run_simulator``).
``SimulatorThread(state)``
    the same on an event loop of its own thread, so that what it records does not wait for the
    caller's own work.
``start_simulator_process(args, log)``
    ``threads-poller simulate --port 0 ARGS`` as a subprocess; its API and admin URLs.
``threads_poller_command()``
    the installed ``threads-poller`` command (``python -m worker.cli`` without one).
``environment_without_settings()``
    this process's environment minus every setting of the service, for a child that must see
    only what the caller sets.
``cpu_seconds(pid)``, ``proc_status_kib(pid, field)``, ``machine_cpu_seconds()``,
``mem_total_mib()``
    CPU and memory figures from /proc (Linux).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis as redis_sync
from redis.asyncio import Redis
from redis.exceptions import RedisError

from simulator import RunningSimulator, SimulatorState, run_simulator
from simulator.app import ADMIN_PREFIX, API_PREFIX

HOST = "127.0.0.1"

# ----- ports -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# ----- processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """A subprocess and the log file its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    _handle: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (no shutdown at all), and reap it."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._close()

    async def astop(self, grace: float = 30.0) -> int | None:
        """``stop`` without blocking the event loop."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), grace)
            except TimeoutError:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        self._close()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        return tail(self.log, lines)

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file ("" if there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    cmd: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = True,
    append: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> Child:
    """Start ``cmd`` with stdout and stderr to ``log`` (appended to with ``append``).

    ``new_session``: in a session of its own, so that a Ctrl-C meant for the caller does not
    reach it; the caller stops it (``Child.stop``)."""
    handle = log.open("ab" if append else "wb")
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=new_session,
            # Tests set the child's resource limits here (open files, core dumps).
            preexec_fn=preexec_fn,
        )
    except BaseException:
        handle.close()
        raise
    return Child(name, proc, log, handle)


def threads_poller_command() -> list[str]:
    """The ``threads-poller`` command of this environment (``python -m worker.cli`` without)."""
    script = Path(sys.executable).parent / "threads-poller"
    if script.exists():
        return [str(script)]
    found = shutil.which("threads-poller")
    return [found] if found else [sys.executable, "-m", "worker.cli"]


def environment_without_settings() -> dict[str, str]:
    """``os.environ`` minus every setting of the service (any case) and every per-account
    ``THREADS_ACCESS_TOKEN_*``: a child sees only the settings its caller gives it."""
    from config import Settings

    ours = {name.upper() for name in Settings.model_fields}
    return {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in ours and not k.upper().startswith("THREADS_ACCESS_TOKEN")
    }


# ----- redis-server ------------------------------------------------------------------------


class RedisNotInstalledError(RuntimeError):
    pass


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotInstalledError(
            "redis-server is not installed: run the README's test command (scripts/test.sh)"
        )
    return binary


class RedisServer:
    """A private redis-server on 127.0.0.1: no RDB, ``noeviction``, AOF with ``appendonly``.

    Port and directory are fixed at construction (the port defaults to a free one), so that a
    ``start()`` after ``kill()`` is the same server, its AOF replayed. The ``redis-server`` log
    is ``dir/redis.log``; what the process itself prints (start-up errors) ``dir/redis.out``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str | None = None,
        extra_args: Sequence[str] = (),
        new_session: bool = False,
        name: str = "redis",
    ) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.new_session = new_session
        self.name = name
        self._child: Child | None = None
        self.restarts = 0  # crash_and_restart calls
        self.downtime = 0.0  # seconds between their SIGKILL and the PING after

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host=HOST, port=self.port)

    @property
    def child(self) -> Child:
        assert self._child is not None, "redis-server not started"
        return self._child

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.child.proc

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def command(self) -> list[str]:
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
        ]
        if self.appendfsync is not None:
            args += ["--appendfsync", self.appendfsync]
        args += ["--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log")]
        return [*args, *self.extra_args]

    def _spawn(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._child = spawn(
            self.name,
            self.command(),
            self.dir / "redis.out",
            new_session=self.new_session,
            append=True,
        )

    def _failed(self) -> RuntimeError:
        self.child.kill()
        logs = (tail(self.dir / "redis.log"), self.child.tail())
        detail = "".join(f"\n{text}" for text in logs if text)
        return RuntimeError(f"redis-server did not start on port {self.port}{detail}")

    def _pings(self) -> bool:
        client = redis_sync.Redis(
            host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=2
        )
        try:
            return bool(client.ping())
        except (RedisError, OSError):  # not yet listening; BusyLoadingError: replaying the AOF
            return False
        finally:
            client.close()

    async def _apings(self) -> bool:
        client = Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    def start(self, wait_s: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING (blocking)."""
        self._spawn()
        deadline = time.monotonic() + wait_s
        while not self._pings():
            if not self.alive() or time.monotonic() > deadline:
                raise self._failed()
            time.sleep(0.05)
        return self

    async def astart(self, wait_s: float = 10.0) -> RedisServer:
        """``start`` without blocking the event loop."""
        self._spawn()
        deadline = time.monotonic() + wait_s
        while not await self._apings():
            if not self.alive() or time.monotonic() > deadline:
                raise self._failed()
            await asyncio.sleep(0.05)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Redis shuts down cleanly), SIGKILL after ``timeout``."""
        if self._child is not None:
            self._child.stop(timeout)

    async def astop(self, grace: float = 10.0) -> None:
        if self._child is not None:
            await self._child.astop(grace)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync."""
        if self._child is not None:
            self._child.kill()

    async def crash_and_restart(self, wait_s: float = 30.0) -> float:
        """SIGKILL, then start on the same port and directory; seconds until it answers."""
        t0 = time.monotonic()
        self.kill()
        await self.astart(wait_s)
        took = time.monotonic() - t0
        self.restarts += 1
        self.downtime += took
        return took


def start_redis(
    directory: Path,
    *,
    appendonly: bool = False,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> RedisServer:
    """A started ``RedisServer`` (blocking until it answers PING)."""
    return RedisServer(directory, port=port, appendonly=appendonly, extra_args=extra_args).start()


def stop_redis(server: RedisServer) -> None:
    server.stop()


# ----- the Threads API simulator -----------------------------------------------------------


def simulator_in_process(
    state: SimulatorState | None = None,
) -> AbstractAsyncContextManager[RunningSimulator]:
    """The simulator in this event loop on a free port of 127.0.0.1, for an ``async with``."""
    return run_simulator(HOST, 0, state)


class SimulatorThread:
    """The simulator on an event loop of its own thread: what it records (arrival times, the
    moments answers go out) does not wait for the caller's own work (sampling Redis, parsing
    big replies), so rates and gaps are measured as the clients produced them."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.sim: RunningSimulator | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with simulator_in_process(self.state) as sim:
            self.sim = sim
            self._ready.set()
            await self._stop.wait()

    def start(self) -> RunningSimulator:
        self._thread.start()
        self._ready.wait(30)
        if self.sim is None:
            raise RuntimeError(f"the simulator did not start: {self._error!r}")
        return self.sim

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


LISTENING = "simulator listening on "  # the line ``threads-poller simulate`` prints when ready


async def start_simulator_process(
    args: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    wait_s: float = 20.0,
) -> tuple[Child, str, str]:
    """``threads-poller simulate --port 0 ARGS``: the process, its API base URL and admin URL."""
    cmd = [*threads_poller_command(), "simulate", "--port", "0", *args]
    child = spawn("simulator", cmd, log, env=env, cwd=cwd)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and child.alive():
        for line in child.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(LISTENING):
                base = line[len(LISTENING) :].strip()
                return child, base, base.removesuffix(API_PREFIX) + ADMIN_PREFIX
        await asyncio.sleep(0.05)
    child.kill()
    raise RuntimeError(f"the simulator did not start:\n{child.tail()}")


# ----- CPU and memory (/proc) --------------------------------------------------------------


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, over all cores (/proc/stat)."""
    first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0
