"""The one helper for the processes of the bench scripts and the tests.

``bench/bench.py``, ``bench/faults/`` (the fault matrix and run) and ``tests/conftest.py``
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
    ``RedisNotInstalledError`` without one. ``redis_cli_binary()`` the same for ``redis-cli``.
``RedisClusterNodes``
    a Redis Cluster of private ``RedisServer`` nodes (``--cluster-enabled yes``), created with
    ``redis-cli --cluster create``: primaries, their replicas, who serves a key's slot, a
    failover (``CLUSTER FAILOVER`` on a replica, or SIGKILL of a primary).
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


def redis_cli_binary() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RedisNotInstalledError(
            "redis-cli is not installed (Debian: redis-tools, which redis-server pulls in): run "
            "the README's test command (scripts/test.sh)"
        )
    return binary


class RedisClusterNodes:
    """A Redis Cluster on 127.0.0.1: ``primaries`` primaries with ``replicas`` replicas each,
    every node a ``RedisServer`` (free port, directory ``dir/node<i>`` with its log and its
    ``nodes.conf``), created from scratch by ``redis-cli --cluster create``.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a primary may not answer before
    its replica takes over (SIGKILL failovers); Redis' default is 15 s. Each node keeps its ACL
    users in ``users.acl`` of its directory (``ACL SAVE``), so a node restarted after
    ``kill()`` (``RedisServer.start()``) still has them.
    ``start()``/``astart()`` return once every node says ``cluster_state:ok`` and they agree
    on who serves every slot. ``nodes`` is the ``REDIS_CLUSTER_NODES`` setting of them all.
    """

    def __init__(
        self,
        directory: Path,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.dir = directory
        self.replicas = replicas
        self.servers = [
            RedisServer(
                directory / f"node{i}",
                name=f"redis-node{i}",
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",  # in the node's own --dir
                    # The bus port is the data port + 10000 unless set: free ports go past 55535.
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # A replica is listed in CLUSTER SLOTS (and counted as settled) once its
                    # offset moved; on an empty primary only these pings move it (default 10 s).
                    "--repl-ping-replica-period",
                    "1",
                    # No 5 s wait for more replicas before a full sync (a restarted node's).
                    "--repl-diskless-sync-delay",
                    "0",
                    # ACL users are each node's own and not replicated: ACL SAVE keeps them
                    # here, for a node restarted after a SIGKILL.
                    "--aclfile",
                    str(directory / f"node{i}" / "users.acl"),
                    *extra_args,
                ],
            )
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def nodes(self) -> str:
        return ",".join(f"{HOST}:{s.port}" for s in self.servers)

    def _create_command(self) -> list[str]:
        return [
            redis_cli_binary(),
            "--cluster",
            "create",
            *(f"{HOST}:{s.port}" for s in self.servers),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]

    def start(self, wait_s: float = 60.0) -> RedisClusterNodes:
        """Start the nodes, create the cluster, wait until it is ok (blocking)."""
        self.start_nodes()
        return self.create(wait_s)

    def start_nodes(self) -> RedisClusterNodes:
        """The nodes alone, each answering PING, no cluster yet (no slot served)."""
        for server in self.servers:
            server.dir.mkdir(parents=True, exist_ok=True)
            (server.dir / "users.acl").touch()  # Redis refuses to start without it
            server.start()
        return self

    def create(self, wait_s: float = 60.0) -> RedisClusterNodes:
        """``redis-cli --cluster create`` on the started nodes; returns once it is settled."""
        deadline = time.monotonic() + wait_s
        log = self.dir / "create.log"
        with log.open("wb") as out:
            done = subprocess.run(
                self._create_command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{tail(log, 30)}")
        self._wait(self.settled, max(1.0, deadline - time.monotonic()))
        return self

    async def astart(self, wait_s: float = 60.0) -> RedisClusterNodes:
        """``start`` without blocking the event loop."""
        return await asyncio.to_thread(self.start, wait_s)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def alive(self) -> list[RedisServer]:
        return [s for s in self.servers if s.alive()]

    def _ask(self, server: RedisServer, *args: str) -> object:
        client = redis_sync.Redis(
            host=HOST, port=server.port, socket_connect_timeout=1, socket_timeout=2
        )
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def _slot_map(self, server: RedisServer) -> dict[int, list[int]] | None:
        """``CLUSTER SLOTS`` as one node sees it: first slot of each range -> ports, primary
        first; None when it does not answer."""
        try:
            reply = self._ask(server, "CLUSTER", "SLOTS")
        except (RedisError, OSError):
            return None
        ranges: dict[int, list[int]] = {}
        # redis-py answers CLUSTER SLOTS as a dict {(first, last): {...}} or as Redis' lists.
        if isinstance(reply, dict):
            for (first, _last), where in reply.items():
                ports = [int(where["primary"][1])] + [int(r[1]) for r in where["replicas"]]
                ranges[int(first)] = ports
        else:
            for entry in reply:  # type: ignore[attr-defined]
                ranges[int(entry[0])] = [int(node[1]) for node in entry[2:]]
        return ranges

    def settled(self) -> bool:
        """Every live node says ``cluster_state:ok`` and they all see the same slot map, every
        primary with its replicas."""
        maps = []
        for server in self.alive():
            try:
                info = self._ask(server, "CLUSTER", "INFO")
            except (RedisError, OSError):
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            maps.append(self._slot_map(server))
        if not maps or maps[0] is None or any(m != maps[0] for m in maps):
            return False
        live = {s.port for s in self.alive()}
        return all(
            len([p for p in ports if p in live]) == 1 + self.replicas for ports in maps[0].values()
        )

    def _serving(self, slot: int) -> list[RedisServer]:
        """The servers of ``slot``, primary first, as the first live node that answers sees."""
        for server in self.alive():
            ranges = self._slot_map(server)
            if ranges is None:
                continue
            first = max(f for f in ranges if f <= slot)
            by_port = {s.port: s for s in self.servers}
            return [by_port[p] for p in ranges[first] if p in by_port]
        raise RuntimeError("no node of the cluster answers")

    def keyslot(self, key: str) -> int:
        for server in self.alive():
            try:
                slot: int = int(self._ask(server, "CLUSTER", "KEYSLOT", key))  # type: ignore[call-overload]
                return slot
            except (RedisError, OSError):
                continue
        raise RuntimeError("no node of the cluster answers")

    def primary_of(self, key: str) -> RedisServer:
        """The primary serving ``key``'s slot now (as the cluster's nodes see it)."""
        return self._serving(self.keyslot(key))[0]

    def replica_of(self, key: str) -> RedisServer:
        """A live replica of the primary serving ``key``'s slot."""
        replicas = [s for s in self._serving(self.keyslot(key))[1:] if s.alive()]
        if not replicas:
            raise RuntimeError(f"the slot of {key!r} has no live replica")
        return replicas[0]

    def role(self, server: RedisServer) -> str:
        """``master`` or ``slave``, as the server itself says (ROLE)."""
        reply = self._ask(server, "ROLE")
        first = reply[0]  # type: ignore[index]
        return first.decode() if isinstance(first, bytes) else str(first)

    def failover(self, key: str, *, wait_s: float = 30.0) -> RedisServer:
        """``CLUSTER FAILOVER`` on a replica of ``key``'s primary (the replica catches up, then
        takes over: nothing is lost); returns the new primary once every node agrees."""
        replica = self.replica_of(key)
        self._ask(replica, "CLUSTER", "FAILOVER")
        self._wait(lambda: self.primary_of(key) is replica and self.settled(), wait_s)
        return replica

    def kill_primary(self, key: str, *, wait_s: float = 60.0) -> tuple[RedisServer, RedisServer]:
        """SIGKILL the primary of ``key``'s slot; returns (the killed one, its successor) once
        a replica has taken over (after ``cluster-node-timeout``) and the live nodes agree."""
        old = self.primary_of(key)
        old.kill()
        self._wait(lambda: self._taken_over(key, old), wait_s)
        return old, self.primary_of(key)

    def _taken_over(self, key: str, old: RedisServer) -> bool:
        try:
            new = self.primary_of(key)
        except (RuntimeError, KeyError):
            return False
        if new is old:
            return False
        maps = [self._slot_map(s) for s in self.alive()]
        return all(m is not None and m == maps[0] for m in maps)

    def _wait(self, done: Callable[[], bool], wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not get there within {wait_s:.0f}s")
            time.sleep(0.05)


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
