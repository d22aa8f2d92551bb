"""Cluster mode's settings (issue 22): REDIS_CLUSTER_NODES like REDIS_SENTINELS, never both; in
cluster mode a KEY_PREFIX with one hash tag and database 0; a tagged prefix accepted at every
door that takes a prefix (settings, ACL lines, the Python client); the cluster client gets the
credentials and TLS a plain client gets (built without connecting)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import ClusterNode

from config import SettingsError, load_settings
from config.settings import hash_tag, valid_key_prefix
from worker.cli import main
from worker.client.client import PollerClient
from worker.store.acl import acl_setuser
from worker.store.cluster import DeploymentCluster
from worker.store.connections import open_redis

NODES = "127.0.0.1:7000,127.0.0.1:7001,[::1]:7002"


def cluster(**more: object) -> dict[str, object]:
    return {"_env_file": None, "redis_cluster_nodes": NODES, "key_prefix": "{tp}", **more}


def refused(**values: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**values)
    return str(info.value)


def test_cluster_nodes_are_host_port_pairs() -> None:
    s = load_settings(**cluster())
    assert s.cluster_addresses() == [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("::1", 7002)]
    assert load_settings(_env_file=None).cluster_addresses() == []
    for bad in ("127.0.0.1", "a:1,", "a:1 b:2", "a:123456"):
        assert refused(**cluster(redis_cluster_nodes=bad)).startswith(
            "invalid setting REDIS_CLUSTER_NODES:"
        )


def test_cluster_and_sentinel_are_refused_together() -> None:
    text = refused(**cluster(redis_sentinels="127.0.0.1:26379"))
    assert text.startswith("invalid settings REDIS_CLUSTER_NODES, REDIS_SENTINELS:"), text


@pytest.mark.parametrize("prefix", ["threads-poller", "tp", "tp-eu"])
def test_cluster_mode_wants_a_hash_tag(prefix: str) -> None:
    text = refused(**cluster(key_prefix=prefix))
    assert text.startswith("invalid settings KEY_PREFIX, REDIS_CLUSTER_NODES:"), text
    assert "KEY_PREFIX={tp}" in text


@pytest.mark.parametrize(("prefix", "tag"), [("{tp}", "tp"), ("{tp}-prod", "tp"), ("tp-{a}", "a")])
def test_tagged_prefixes_are_accepted_in_both_modes(prefix: str, tag: str) -> None:
    assert load_settings(**cluster(key_prefix=prefix)).key_prefix == prefix
    assert load_settings(_env_file=None, key_prefix=prefix).key_prefix == prefix
    assert hash_tag(prefix) == tag and valid_key_prefix(prefix)
    assert hash_tag("tp") is None


@pytest.mark.parametrize(
    "prefix", ["{}", "{a}{b}", "a}", "{a", "}a{", "{a:b}", "{*}", "{a b}", "{tp}:eu", "tp\n"]
)
def test_braces_only_as_one_non_empty_tag(prefix: str) -> None:
    assert not valid_key_prefix(prefix)
    for values in ({"_env_file": None, "key_prefix": prefix}, cluster(key_prefix=prefix)):
        assert refused(**values).startswith("invalid setting KEY_PREFIX:")
    with pytest.raises(ValueError, match="invalid prefix"):
        acl_setuser("u", ["worker"], prefix)


def test_a_prefix_is_at_most_64_characters_tag_included() -> None:
    assert load_settings(**cluster(key_prefix="{" + "t" * 62 + "}"))
    assert refused(**cluster(key_prefix="{" + "t" * 63 + "}")).startswith(
        "invalid setting KEY_PREFIX:"
    )


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:7000/1", "redis://127.0.0.1:7000/0?db=2", "rediss://h:1/15"]
)
def test_cluster_mode_has_database_0_only(url: str) -> None:
    text = refused(**cluster(redis_url=url))
    assert text.startswith("invalid settings REDIS_URL, REDIS_CLUSTER_NODES:"), text
    assert "database 0" in text


def test_cluster_mode_refuses_a_unix_socket() -> None:
    text = refused(**cluster(redis_url="unix:///run/redis.sock"))
    assert text.startswith("invalid settings REDIS_URL, REDIS_CLUSTER_NODES:"), text


def test_database_0_and_a_bare_url_are_fine() -> None:
    for url in ("redis://user:pw@h:1/0", "redis://h:1", "rediss://h:1/", "redis://h:1/0?db=0"):
        assert load_settings(**cluster(redis_url=url)).redis_url == url


def test_acl_lines_of_a_tagged_prefix() -> None:
    line = acl_setuser("tp-worker", ["worker"], "{tp}")
    assert "~{tp}:*" in line and "~arq:job:{tp}:*" in line and "+cluster|slots" not in line
    clustered = acl_setuser("tp-worker", ["worker"], "{tp}", cluster=True)
    assert "+cluster|slots" in clustered and "+command" in clustered
    assert clustered.replace(" +cluster|slots +command", "") == line
    producer = acl_setuser("tp-p", ["producer"], "tp-{a}", cluster=True, producer="pa")
    assert producer.endswith("+cluster|slots +command +ping +select +xadd %W~tp-{a}:intake:pa")


def test_acl_command_names_its_user_without_braces(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "reader", "--prefix", "{tp}-prod", "--cluster"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ACL SETUSER tp-prod-reader reset on +cluster|slots +command "), out


def test_the_python_client_takes_a_tagged_prefix() -> None:
    redis = open_redis(load_settings(**cluster()))
    for prefix in ("{tp}", "tp:eu-{a}", "{tp}-prod"):
        assert PollerClient(redis, key_prefix=prefix).key_prefix == prefix
    for prefix in ("{}", "{a}{b}", "{a"):
        with pytest.raises(ValueError, match="hash tag"):
            PollerClient(redis, key_prefix=prefix)


def test_the_cluster_client_gets_a_plain_clients_credentials_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made\n")
    password = tmp_path / "pw"
    password.write_text("pw-from-a-file\n")
    password.chmod(0o600)
    common = {
        "redis_url": "rediss://tp-worker@127.0.0.1:6379/0",
        "redis_password_file": str(password),
        "redis_tls_ca_file": str(ca),
    }
    plain = open_redis(load_settings(_env_file=None, **common), worker=True)
    redis = open_redis(load_settings(**cluster(**common)), worker=True)
    assert isinstance(redis, DeploymentCluster)
    want = {
        k: plain.connection_pool.connection_kwargs[k]
        for k in ("username", "password", "ssl_ca_certs", "ssl_check_hostname")
    }
    assert want == {
        "username": "tp-worker",
        "password": "pw-from-a-file",
        "ssl_ca_certs": str(ca),
        "ssl_check_hostname": True,
    }
    cluster_kwargs = redis.get_connection_kwargs()
    assert {k: cluster_kwargs[k] for k in want} == want
    assert cluster_kwargs["connection_class"].__name__ == "SSLConnection"
    # The plain client of a node (pipelines, TIME): the same, retries included.
    client = redis.client_of(ClusterNode("127.0.0.1", 7001))
    kwargs = client.connection_pool.connection_kwargs
    assert {k: kwargs[k] for k in want} == want
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["retry"]._retries == plain.connection_pool.connection_kwargs["retry"]._retries


def test_a_url_may_turn_the_host_name_check_off() -> None:
    url = "rediss://127.0.0.1:6379/0?ssl_check_hostname=false"
    redis = open_redis(load_settings(**cluster(redis_url=url)))
    assert isinstance(redis, DeploymentCluster)
    assert redis.get_connection_kwargs()["ssl_check_hostname"] is False
