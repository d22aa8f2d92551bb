"""Every key a script touches is one of its KEYS (worker/store/lua/lib.lua), checked by watching.

``KeyWatch`` reads a real redis-server's ``MONITOR`` feed while a test runs. Redis runs one
command at a time and feeds a script's own commands right after the ``EVALSHA``/``EVAL`` that
ran it (``[0 lua]`` lines), so each of those commands can be held to the keys its script was
given. Redis itself says which arguments of a command are keys (``COMMAND GETKEYS``), so the
check knows no command of ours by heart. A key a script touched without being given it is a
violation: cluster mode refuses it when it is in another slot, Dragonfly always.

Used by tests/integration/test_declared_keys.py, and around every test that uses a
``redis_server`` when ``TP_WATCH_KEYS=1`` (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

_LINE = re.compile(rb"^\+?\d+\.\d+ \[\d+ ([^\]]*)\] (.*)$")
_ARG = re.compile(rb'"((?:\\.|[^"\\])*)"')
_ESCAPES = {
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"a": b"\a",
    b"b": b"\b",
    b'"': b'"',
    b"\\": b"\\",
}


def unquote(arg: bytes) -> bytes:
    """One argument as MONITOR quotes it (Redis' ``sdscatrepr``)."""
    out = bytearray()
    i = 0
    while i < len(arg):
        c = arg[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = arg[i + 1 : i + 2]
        if nxt == b"x":
            out.append(int(arg[i + 2 : i + 4], 16))
            i += 4
        else:
            out += _ESCAPES.get(nxt, nxt)
            i += 2
    return bytes(out)


def parse(line: bytes) -> tuple[str, list[bytes]] | None:
    """(client, arguments) of one MONITOR line; None for anything else."""
    m = _LINE.match(line.rstrip(b"\r\n"))
    if not m:
        return None
    client = m.group(1).decode(errors="replace")
    return client, [unquote(a) for a in _ARG.findall(m.group(2))]


@dataclass
class Violation:
    script: str  # the sha (or "eval")
    command: str
    key: bytes
    declared: tuple[bytes, ...]


@dataclass
class KeyWatch:
    host: str
    port: int
    lines: list[bytes] = field(default_factory=list)
    scripts_run: int = 0
    script_commands: int = 0
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KeyWatch:
        # A line is one command: an intake entry of junk can be long.
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=64 * 1024 * 1024
        )
        self._writer.write(b"*1\r\n$7\r\nMONITOR\r\n")
        await self._writer.drain()
        ok = await self._reader.readline()
        if not ok.startswith(b"+OK"):
            raise RuntimeError(f"MONITOR refused: {ok!r}")
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                return
            self.lines.append(line)

    async def __aexit__(self, *exc: object) -> None:
        # Redis has fed what it ran before this PING's answer.
        marker = Redis(host=self.host, port=self.port)
        try:
            await marker.echo("keywatch-end")
        finally:
            await marker.aclose()
        for _ in range(200):
            if any(b'"keywatch-end"' in line for line in self.lines[-50:]):
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def violations(self) -> list[Violation]:
        """The keys scripts touched without being given them (after the watch has ended)."""
        found: list[Violation] = []
        runs: list[tuple[str, tuple[bytes, ...], list[list[bytes]]]] = []
        current: tuple[str, tuple[bytes, ...], list[list[bytes]]] | None = None
        for line in self.lines:
            parsed = parse(line)
            if parsed is None:
                continue
            client, args = parsed
            if client == "lua":
                if current is not None:
                    current[2].append(args)
                continue
            name = args[0].lower() if args else b""
            if name in (b"evalsha", b"eval", b"evalsha_ro", b"eval_ro") and len(args) >= 3:
                n = int(args[2])
                script = args[1].decode() if name.startswith(b"evalsha") else "eval"
                current = (script, tuple(args[3 : 3 + n]), [])
                runs.append(current)
            else:
                current = None
        self.scripts_run = len(runs)
        getkeys = Redis(host=self.host, port=self.port)
        try:
            cache: dict[tuple[bytes, ...], list[bytes]] = {}
            for script, declared, commands in runs:
                allowed = set(declared)
                for args in commands:
                    self.script_commands += 1
                    key = tuple(args)
                    if key not in cache:
                        cache[key] = await _keys_of(getkeys, args)
                    for k in cache[key]:
                        if k not in allowed:
                            found.append(Violation(script, args[0].decode().lower(), k, declared))
        finally:
            await getkeys.aclose()
        return found


async def _keys_of(client: Redis, args: list[bytes]) -> list[bytes]:
    try:
        # One argument: redis-py splits it in two, and parses no COMMAND reply as COMMAND INFO.
        keys = await client.execute_command("COMMAND GETKEYS", *args)  # type: ignore[no-untyped-call]
    except ResponseError:
        return []  # a command without keys (TIME)
    return [k.encode() if isinstance(k, str) else bytes(k) for k in keys]


def describe(violations: list[Violation]) -> str:
    seen: dict[tuple[str, str, bytes], Violation] = {}
    for v in violations:
        seen.setdefault((v.script, v.command, v.key), v)
    return "\n".join(
        f"script {v.script[:10]}: {v.command} {v.key!r} not among its KEYS {list(v.declared)[:6]}"
        for v in seen.values()
    )
