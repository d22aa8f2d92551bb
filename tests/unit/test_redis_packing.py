"""Commands packed in C (worker.store.connections, ``_PackedInC``) are the bytes redis-py's own
asyncio packer makes, and what it refuses is refused the same way. No connection is made."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import DataError

from tests.helpers.settings import make_settings
from worker.store.connections import _PackedInC, open_redis, packed_in_c


def connection(client: Redis) -> AbstractConnection:
    """A connection of ``client``'s pool, as the pool makes one (it connects on first use)."""
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


def both(*args: Any) -> tuple[bytes, bytes]:
    """(redis-py's packing, ours), each as the bytes sent."""
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*args))
    ours_conn = connection(packed_in_c(Redis()))
    assert isinstance(ours_conn, _PackedInC)
    return theirs, b"".join(bytes(part) for part in ours_conn.pack_command(*args))


class Color(enum.IntEnum):
    RED = 1


class Word(enum.StrEnum):
    DONE = "FINISHED"


def test_a_record_scripts_call_is_the_same_bytes() -> None:
    args: tuple[Any, ...] = (
        "EVALSHA",
        "a" * 40,
        3,
        "tp:result:1",
        "arq:in-progress:tp:check:1:abc",
        b"tp:queue",
        "host-1-abcdef/1",
        0,
        1_700_000_000_123,
        -5,
        1.25,
        float("inf"),
        "",
        b"",
        memoryview(b"job data"),
        "é ✓",
        Word.DONE,
        2**70,
    )
    theirs, ours = both(*args)
    assert ours == theirs


def test_a_command_name_with_spaces_is_split_as_redis_py_does() -> None:
    for name in ("CONFIG GET", b"CONFIG GET", "CLIENT  SETNAME"):
        theirs, ours = both(name, "x")
        assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, bytearray(b"x"), object()])
def test_what_redis_py_refuses_is_refused_with_its_error(bad: Any) -> None:
    plain = Connection()
    with pytest.raises(DataError) as theirs:
        plain.pack_command("SET", "k", bad)
    conn = connection(packed_in_c(Redis()))
    with pytest.raises(DataError) as ours:
        conn.pack_command("SET", "k", bad)
    assert str(ours.value) == str(theirs.value)


def test_an_int_subclass_goes_to_redis_pys_packer() -> None:
    # hiredis refuses an IntEnum; redis-py packs its repr. Whatever it did, it still does.
    theirs, ours = both("SET", "k", Color.RED)
    assert ours == theirs


def test_a_lone_surrogate_fails_as_it_did() -> None:
    with pytest.raises(UnicodeEncodeError):
        both("SET", "k", "\ud800")


def test_another_encoding_is_packed_by_redis_py() -> None:
    conn = connection(packed_in_c(Redis(encoding="latin-1")))
    theirs = Connection(encoding="latin-1").pack_command("SET", "k", "é")
    assert conn.pack_command("SET", "k", "é") == theirs


@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(exclude_categories=["Cs"])),
            st.binary(),
            st.integers(),
            st.floats(),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_any_arguments_pack_to_the_same_bytes(args: list[Any]) -> None:
    theirs, ours = both("EVALSHA", *args)
    assert ours == theirs


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6379/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_every_client_the_worker_opens_packs_in_c(url: str, base: type) -> None:
    for options in ({"worker": True}, {"max_connections": 3}, {}):
        client = open_redis(make_settings(url, "http://127.0.0.1:9/v1.0"), **options)
        cls = client.connection_pool.connection_class
        assert issubclass(cls, _PackedInC)
        assert issubclass(cls, base)
        assert cls.__name__ == base.__name__


def test_a_sentinel_client_packs_in_c() -> None:
    settings = make_settings(
        "redis://127.0.0.1:6379/0", "http://127.0.0.1:9/v1.0", redis_sentinels="127.0.0.1:26379"
    )
    client = open_redis(settings, worker=True)
    cls = client.connection_pool.connection_class
    assert issubclass(cls, _PackedInC)
    assert issubclass(cls, SentinelManagedConnection)
    # Wrapping twice keeps one layer.
    assert packed_in_c(client).connection_pool.connection_class is cls
