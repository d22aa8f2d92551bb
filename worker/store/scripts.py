"""The one loader of ``worker/store/lua/*.lua``.

Each script starts with its ``#!lua`` line (so Redis refuses a writing script as a whole when it
is over ``maxmemory``, rather than failing half-way); the loader puts the shared ``lib.lua``
(Redis' clock, the fence, the pacing calendar) right after that line. Scripts are registered
with redis-py, which runs them by SHA and loads them again after a Redis restart.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

LIB = "lib.lua"


@functools.cache
def source(name: str) -> str:
    """The text Redis runs for ``lua/<name>``: its shebang line, the library, its body."""
    folder = resources.files("worker.store").joinpath("lua")
    text = folder.joinpath(name).read_text(encoding="utf-8")
    first, _, body = text.partition("\n")
    if not first.startswith("#!lua"):
        raise ValueError(f"worker/store/lua/{name} must start with a '#!lua' line")
    lib = folder.joinpath(LIB).read_text(encoding="utf-8")
    return f"{first}\n{lib}\n{body}"


def register(redis: Redis, name: str) -> AsyncScript:
    return redis.register_script(source(name))


# What a script returns when it found it needs a key it was not given (lib.lua, ``need``).
NEED_KEY = b"need-key"
# A script asks for at most this many keys one after another (a carousel's children's parents).
MOST_ASKED = 64


def needed_key(reply: Any) -> str | None:
    """The key a script's reply asks for (lib.lua, ``need``), else None."""
    if isinstance(reply, list) and len(reply) == 2 and reply[0] in (NEED_KEY, "need-key"):
        key = reply[1]
        return key.decode() if isinstance(key, bytes) else str(key)
    return None


class ScriptCall(Protocol):
    """A registered script (``AsyncScript``), or the same calls sent together (``Batched``)."""

    def __call__(self, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Awaitable[Any]: ...


_Pending = tuple[AsyncScript, Sequence[KeyT], Sequence[EncodableT], "asyncio.Future[Any]"]


class Batched:
    """Calls of a script made in the same turn of the event loop go to Redis together, with
    those of the other ``Batched`` scripts on the same client: one pipeline (one write, one
    read of the replies) instead of a round trip each.

    Why: the record script's call is one per check, and its send alone (a system call that
    hands the bytes to Redis through the loopback) was about a tenth of a check's CPU, with
    redis-py's per-command work (a pooled connection, its health check, the reply's parse)
    on top (README, "Where a check's CPU goes beyond the floor"). A busy worker finishes many
    status calls in one turn of its loop, and their records now share those costs (and a claim
    made in the same turn goes with them).

    Each call is still its own script run, atomic and fenced by its own token; a pipeline is
    not a transaction, and one call's error (a Lua error, ``-OOM``) is that call's alone. A
    connection error fails every call of the batch, each of which its caller retries (a fenced
    write is safe to repeat: ``queue.persist``), as a single call's caller did. A caller
    cancelled while its call is in flight is as before: the call may still have run."""

    def __init__(self, script: AsyncScript) -> None:
        self.script = script

    def __call__(self, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Awaitable[Any]:
        client = self.script.registered_client
        turn = _TURNS.get(client)
        if turn is None:
            turn = _TURNS[client] = _Turn()
        return turn.add(self.script, keys, args)


class _Turn:
    """The ``Batched`` calls of one client in the current turn of the event loop."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        # The loop whose turn ``_pending`` belongs to (a client may outlive a loop: tests).
        self._loop: asyncio.AbstractEventLoop | None = None
        # The batches being sent (a task keeps no reference to itself).
        self._sending: set[asyncio.Task[None]] = set()

    def add(
        self, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT]
    ) -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._pending and self._loop is not loop:
            # Left by a loop that stopped before its turn ended: never sent, never answered.
            self._pending = []
        if not self._pending:
            # After every callback already due in this turn: the others' calls join.
            self._loop = loop
            loop.call_soon(self._flush)
        self._pending.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        results: list[Any]
        try:
            if len(batch) == 1:
                script, keys, args, _ = batch[0]
                try:
                    results = [await script(keys=keys, args=args)]
                except Exception as exc:
                    results = [exc]
            else:
                results = await _pipelined(batch)
        except BaseException as exc:
            # A connection error, or a cancellation (a shutdown): every call of the batch.
            for *_, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


async def _pipelined(batch: list[_Pending]) -> list[Any]:
    client = batch[0][0].registered_client
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    for i, result in enumerate(results):
        if isinstance(result, NoScriptError):
            # Redis lost its scripts (a restart, a failover): the script loads it again.
            script, keys, args, _ = batch[i]
            try:
                results[i] = await script(keys=keys, args=args)
            except Exception as exc:
                results[i] = exc
    return results


# Each client's batch of the current turn (a client's scripts share its connections).
_TURNS: weakref.WeakKeyDictionary[Redis, _Turn] = weakref.WeakKeyDictionary()


def ask(reply: Any, asked: list[str]) -> bool:
    """Whether ``reply`` asks for a key (lib.lua, ``need``); if so it is added to ``asked``, the
    keys to give the script's next call. A key asked for again, or too many, is a defect."""
    key = needed_key(reply)
    if key is None:
        return False
    if key in asked:
        raise RuntimeError(f"a script asked again for the key it was given: {key}")
    if len(asked) >= MOST_ASKED:
        raise RuntimeError(f"a script asked for more than {MOST_ASKED} keys")
    asked.append(key)
    return True


async def call(script: ScriptCall, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
    """Run ``script`` with ``keys``, again with every key it asks for added after them (it asks
    before it writes anything, so a call that asked changed nothing)."""
    extra: list[str] = []
    while True:
        reply = await script(keys=[*keys, *extra], args=list(args))
        if not ask(reply, extra):
            return reply
