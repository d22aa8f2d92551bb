"""A primary, a replica and a proxy in front of them: the Redis the lifecycle's model runs on.

Real ``redis-server`` processes (AOF with ``appendfsync always``), so that "Redis restarts from
its AOF" and "failover to a replica that missed the last writes" are what Redis really does:

- ``partition()`` cuts the replica's link (``REPLICAOF NO ONE`` on it): the primary keeps taking
  writes the replica will never see, and ``WAIT`` is not acknowledged;
- ``failover()`` kills the primary, promotes the replica with what it has, points the proxy at
  it, and starts a fresh replica of it: whatever the replica missed is gone;
- ``restart_primary()`` SIGKILLs the primary and starts it again on its AOF;
- the proxy can lose one reply (``lose_reply(pattern)``): the next request that contains
  ``pattern`` reaches Redis and runs, and the client's connection is cut before the answer comes
  back, as a network would.

Clients connect to the proxy only, so they reconnect to whichever server is the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from pathlib import Path

import redis as redis_sync

from bench.harness import HOST, RedisServer, free_port


class ReplyProxy:
    """A TCP proxy on its own thread and event loop (it outlives the model's loops)."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.lost = 0
        self._armed: bytes | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._main, name="reply-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, HOST, self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    def lose_reply(self, pattern: bytes | None) -> None:
        """Arm (or, with None, disarm) the loss of the next reply to a request containing
        ``pattern``."""
        with self._lock:
            self._armed = pattern

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._armed is not None

    def retarget(self, port: int) -> None:
        """Send new connections to ``port`` and cut every open one (clients reconnect)."""
        self.target_port = port
        self._loop.call_soon_threadsafe(self._cut_all)

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                with self._lock:
                    hit = self._armed is not None and self._armed in data
                    if hit:
                        self._armed = None
                if hit:
                    up_writer.write(data)
                    await up_writer.drain()
                    # The request runs; its answer never reaches the client.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(up_reader.read(1), 5)
                    self.lost += 1
                    cut.set()
                    return
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if cut.is_set():
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._cut_all)
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Topology:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._n = 0
        self.primary = self._server(None).start()
        self.replica = self._server(self.primary.port).start()
        self.proxy = ReplyProxy(self.primary.port)
        self.partitioned = False
        self.failovers = 0
        self.restarts = 0
        self._linked()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.proxy.port}/0"

    def _server(self, master_port: int | None) -> RedisServer:
        self._n += 1
        directory = self.root / f"redis-{self._n}"
        shutil.rmtree(directory, ignore_errors=True)
        extra = ["--replicaof", HOST, str(master_port)] if master_port else []
        return RedisServer(
            directory,
            appendonly=True,
            appendfsync="always",
            extra_args=[*extra, "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"],
            name=f"redis-{self._n}",
        )

    def _linked(self, timeout: float = 10.0) -> None:
        """Wait until the replica holds a write made on the primary just now (``WAIT`` on the
        writing connection: a link that is "up" but not streaming does not count)."""
        deadline = time.monotonic() + timeout
        primary = self.primary.client()
        try:
            while time.monotonic() < deadline:
                primary.set("model:probe", time.monotonic())
                acked = primary.execute_command("WAIT", 1, 500)  # type: ignore[no-untyped-call]
                if int(acked) >= 1:
                    primary.delete("model:probe")
                    return
        finally:
            primary.close()
        raise RuntimeError("the replica did not catch up with the primary")

    def reset(self) -> None:
        """A healthy pair with no data, the proxy disarmed."""
        self.proxy.lose_reply(None)
        if self.partitioned:
            self.heal()
        if not self.primary.alive():
            self.primary.start()
        if not self.replica.alive():
            self.replica.start()
        client = self.primary.client()
        try:
            client.config_set("maxmemory", 0)
            client.flushall()
        finally:
            client.close()
        self._linked()

    def primary_client(self) -> redis_sync.Redis:
        return self.primary.client()

    def partition(self) -> None:
        """The replica stops receiving the primary's writes (its link is cut: it keeps what
        it has, and the primary sees no replica connected)."""
        if not self.partitioned:
            client = self.replica.client()
            try:
                client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
            finally:
                client.close()
            self.partitioned = True

    def heal(self) -> None:
        """The link is back: the replica resynchronises with the primary."""
        if self.partitioned:
            client = self.replica.client()
            try:
                client.execute_command(  # type: ignore[no-untyped-call]
                    "REPLICAOF", HOST, str(self.primary.port)
                )
            finally:
                client.close()
            self.partitioned = False
            self._linked()

    def failover(self) -> None:
        """The replica, with whatever it has, becomes the primary; a new replica follows it.

        A partitioned replica is promoted with what it had when its link was cut."""
        self.failovers += 1
        self.primary.kill()
        if self.partitioned:
            self.partitioned = False
            promoted = self.replica
        else:
            promoted = self.replica
            client = promoted.client()
            try:
                client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
            finally:
                client.close()
        self.primary = promoted
        self.proxy.retarget(promoted.port)
        self.replica = self._server(promoted.port).start()
        self._linked()

    def restart_primary(self) -> None:
        """SIGKILL and restart on the AOF (every write was fsynced: nothing is lost)."""
        self.restarts += 1
        self.primary.kill()
        self.primary = self._as_primary(self.primary)
        self.proxy.retarget(self.primary.port)
        if not self.partitioned:
            self._linked()

    @staticmethod
    def _as_primary(old: RedisServer) -> RedisServer:
        """``old``'s directory and port (its AOF), started as a primary: a promoted replica's
        command line still says --replicaof."""
        args = list(old.extra_args)
        if "--replicaof" in args:
            i = args.index("--replicaof")
            del args[i : i + 3]
        return RedisServer(
            old.dir,
            port=old.port,
            appendonly=True,
            appendfsync="always",
            extra_args=args,
            name=old.name,
        ).start()

    def close(self) -> None:
        self.proxy.close()
        for server in (self.primary, self.replica):
            server.kill()
