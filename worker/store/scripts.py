"""The one loader of ``worker/store/lua/*.lua``.

Each script starts with its ``#!lua`` line (so Redis refuses a writing script as a whole when it
is over ``maxmemory``, rather than failing half-way); the loader puts the shared ``lib.lua``
(Redis' clock, the fence, the pacing calendar) right after that line. Scripts are registered
with redis-py, which runs them by SHA and loads them again after a Redis restart.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
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


async def call(script: AsyncScript, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
    """Run ``script`` with ``keys``, again with every key it asks for added after them (it asks
    before it writes anything, so a call that asked changed nothing)."""
    extra: list[str] = []
    for _ in range(MOST_ASKED + 1):
        reply = await script(keys=[*keys, *extra], args=list(args))
        key = needed_key(reply)
        if key is None:
            return reply
        if key in extra:
            raise RuntimeError(f"a script asked again for the key it was given: {key}")
        extra.append(key)
    raise RuntimeError(f"a script asked for more than {MOST_ASKED} keys")
