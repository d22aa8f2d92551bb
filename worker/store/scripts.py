"""The one loader of ``worker/store/lua/*.lua``.

Each script starts with its ``#!lua`` line (so Redis refuses a writing script as a whole when it
is over ``maxmemory``, rather than failing half-way); the loader puts the shared ``lib.lua``
(Redis' clock, the fence, the pacing calendar) right after that line. Scripts are registered
with redis-py, which runs them by SHA and loads them again after a Redis restart.
"""

from __future__ import annotations

import functools
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

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
