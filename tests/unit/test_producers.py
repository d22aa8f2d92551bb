"""Producers' scopes (issue 21, item 2), the pure parts: the configuration, what a scope
refuses, API keys bound to a producer, the ACL line of a producer's stream, and who may do
what over HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from config import SettingsError, load_settings
from config.producers import (
    DEFAULT_PRODUCER,
    ProducersError,
    Scope,
    parse_producers,
    split_scoped_key,
)
from worker.store.acl import acl_setuser, role_rules
from worker.store.keys import Keys
from worker.web.access import KeyRing, Role, authorize
from worker.web.auth import KeysError, KeySource

CONFIG = {
    "a": {"accounts": ["1111"], "force": True, "publish": True, "webhook": True},
    "b": {"accounts": ["2222"]},
    "any": {"accounts": "*", "publish": True},
}


def test_no_configuration_is_one_default_producer_allowed_everything() -> None:
    for text in (None, "", "  "):
        producers = parse_producers(text)
        assert list(producers.scopes) == [DEFAULT_PRODUCER] and producers.named == []
        assert (
            producers.default.refusals(account=None, force=True, publish=True, webhook=True) == []
        )
    settings = load_settings(_env_file=None)
    assert settings.producer_scopes().default == Scope(DEFAULT_PRODUCER)


def test_a_scope_allows_what_it_says_and_nothing_more() -> None:
    producers = parse_producers(json.dumps(CONFIG))
    assert [s.name for s in producers.named] == ["a", "any", "b"]
    assert producers.default == Scope(DEFAULT_PRODUCER)  # not named: as before scopes
    b = producers.get("b")
    assert b.refusals(account="2222") == []
    assert b.refusals(account="1111", force=True, publish=True, webhook=True) == [
        "account 1111",
        "force",
        "publish",
        "webhook_url",
    ]
    # A producer with an account list polls only those (not the deployment's own token).
    assert b.refusals(account=None) == ["no account (the default token)"]
    anyone = producers.get("any")
    assert anyone.refusals(account=None, publish=True) == []
    assert anyone.refusals(account="5", force=True) == ["force"]
    assert anyone.lua_accounts() == "*" and b.lua_accounts() == ",2222,"
    with pytest.raises(ProducersError, match="no producer named 'zz'"):
        producers.get("zz")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("[]", "JSON object"),
        ("{", "not JSON"),
        ('{"A": {}}', "producer name 'A'"),
        ('{"dead": {}}', "reserved"),  # {prefix}:intake:dead is the dead-letter stream
        ('{"a b": {}}', "producer name"),
        ('{"a": []}', "expected an object"),
        ('{"a": {"acounts": ["1"]}}', "unknown key"),
        ('{"a": {"accounts": "1111"}}', "list of user ids"),
        ('{"a": {"accounts": ["12x"]}}', "strings of digits"),
        ('{"a": {"accounts": [1111]}}', "strings of digits"),
        ('{"a": {"force": "yes"}}', "true or false"),
    ],
)
def test_a_bad_configuration_stops_start_up_naming_the_setting(config: str, says: str) -> None:
    with pytest.raises(ProducersError, match=says):
        parse_producers(config)
    with pytest.raises(SettingsError, match=rf"invalid setting PRODUCERS: .*{says}"):
        load_settings(_env_file=None, producers=config)


def test_the_producers_file_is_a_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "producers.json"
    path.write_text(json.dumps(CONFIG))
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match=r"PRODUCERS_FILE.*readable or writable by others"):
        load_settings(_env_file=None, producers_file=path)
    os.chmod(path, 0o600)
    settings = load_settings(_env_file=None, producers_file=path)
    assert settings.producer_scopes().get("b").accounts == frozenset({"2222"})
    with pytest.raises(SettingsError, match="PRODUCERS or PRODUCERS_FILE, not both"):
        load_settings(_env_file=None, producers_file=path, producers="{}")
    path.write_text('{"A": {}}')
    with pytest.raises(SettingsError, match=r"invalid setting PRODUCERS_FILE: .*'A'"):
        load_settings(_env_file=None, producers_file=path)


def test_a_named_producer_has_its_own_stream_and_redis_user() -> None:
    keys = Keys("tp")
    assert keys.intake_of(DEFAULT_PRODUCER) == "tp:intake"
    assert keys.intake_of("a") == "tp:intake:a"
    assert role_rules("producer", "tp", "a") == ["+ping", "+select", "+xadd", "%W~tp:intake:a"]
    assert role_rules("producer", "tp", DEFAULT_PRODUCER) == role_rules("producer", "tp")
    line = acl_setuser("tp-producer-a", ["producer", "reader"], "tp", producer="a")
    assert "%W~tp:intake:a" in line and "%W~tp:intake " not in line + " "
    for bad in ("*", "a ~*", "dead", "A"):
        with pytest.raises(ValueError, match=r"invalid producer name|reserved"):
            acl_setuser("u", ["producer"], "tp", producer=bad)
    with pytest.raises(ValueError, match="goes with the producer role"):
        acl_setuser("u", ["reader"], "tp", producer="a")


def test_an_api_key_is_bound_to_a_producer_by_name() -> None:
    names = ["default", "a", "b"]
    assert split_scoped_key("a=key-of-a-0123456789", names) == ("a", "key-of-a-0123456789")
    assert split_scoped_key("plain-key-0123456789", names) == (None, "plain-key-0123456789")
    # Base64 keys (capitals, padding) stay plain keys; so does every key without named
    # producers, as before scopes.
    assert split_scoped_key("Zm9vYmFyYmF6cXV4MTIz==", names)[0] is None
    assert split_scoped_key("a=key-of-a-0123456789", ["default"]) == (
        None,
        "a=key-of-a-0123456789",
    )
    assert split_scoped_key("default=key-0123456789abc", names) == (None, "key-0123456789abc")
    # A misspelt producer is refused, never taken for an operator's key.
    with pytest.raises(ProducersError, match=r"'pipline', which is not configured"):
        split_scoped_key("pipline=key-0123456789abc", names)
    with pytest.raises(KeysError, match=r"invalid setting API_KEYS: .*'pipline'"):
        KeySource(write="pipline=key-0123456789abc", producers=names)
    with pytest.raises(KeysError, match="at least 16"):
        KeySource(write="a=short", producers=names)
    ring = KeySource(write="a=key-of-a-0123456789,plain-key-0123456789", producers=names).ring()
    assert {k.secret: k.producer for k in ring.keys} == {
        "key-of-a-0123456789": "a",
        "plain-key-0123456789": None,
    }


def test_a_producers_key_enqueues_and_reads_and_operates_nothing() -> None:
    ring = KeyRing.build(
        ["key-of-a-0123456789", "operator-key-0123456789"],
        ["read-key-0123456789"],
        {"key-of-a-0123456789": "a"},
    )

    def verdict(key: str, method: str, *, enqueue: bool = False) -> tuple[bool, str]:
        v = authorize(
            ring,
            method=method,
            authorization=f"Bearer {key}",
            session=None,
            csrf=None,
            now=0.0,
            enqueue=enqueue,
        )
        return v.allowed, v.code

    assert verdict("key-of-a-0123456789", "POST", enqueue=True) == (True, "")
    assert verdict("key-of-a-0123456789", "GET") == (True, "")
    assert verdict("key-of-a-0123456789", "POST") == (False, "forbidden")  # cancel, replay
    assert verdict("key-of-a-0123456789", "DELETE") == (False, "forbidden")
    assert verdict("operator-key-0123456789", "POST") == (True, "")
    assert verdict("read-key-0123456789", "POST", enqueue=True) == (False, "forbidden")
    assert {k.role for k in ring.keys if k.producer} == {Role.WRITE}


async def test_the_client_refuses_before_any_redis_call() -> None:
    """Scope and stream names are judged before the client touches Redis (nothing listens on
    this client's address)."""
    from redis.asyncio import Redis

    from worker import PollerClient
    from worker.core.errors import ScopeError

    redis = Redis(host="127.0.0.1", port=1)
    client = PollerClient(redis, producers=parse_producers(json.dumps(CONFIG)), producer="b")
    assert client.producer.name == "b"
    with pytest.raises(ScopeError, match="reserved"):
        await client.submit_many(["1"], producer="dead")  # the dead-letter stream
    with pytest.raises(ScopeError, match="may not use: account 1111, publish"):
        await client.submit_many(["1"], account="1111", publish=True)
    with pytest.raises(ScopeError, match="may not use: webhook_url"):
        await client.enqueue("1", account="2222", webhook_url="https://example.com/h")
    with pytest.raises(ScopeError, match="no producer named 'zz'"):
        PollerClient(redis, producer="zz")
    await redis.aclose()
