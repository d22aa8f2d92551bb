"""The SSRF guard's rules (worker.core.targets), pure: URL syntax, address classes, the
allowlist, the enqueue check with a resolver that answers from a table. The doors (client, CLI,
intake, delivery) against real sockets: tests/integration/test_webhook_guard.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import SettingsError
from tests.helpers.settings import make_settings
from worker.core.errors import InvalidIdError
from worker.core.targets import (
    IPAddress,
    WebhookPolicy,
    address_class,
    address_refusal,
    check_target,
    ipv4_legacy,
    parse_target,
    webhook_policy,
)
from worker.store.targets import check_webhook_url, check_webhook_urls

DEFAULT = WebhookPolicy()


def refused(url: str, policy: WebhookPolicy = DEFAULT) -> str:
    with pytest.raises(InvalidIdError) as info:
        check_target(parse_target(url), policy)
    return str(info.value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.9.9.9:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://10.0.0.5/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd00::1]/", "private"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://255.255.255.255/", "reserved"),
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.10/", "non-public"),  # documentation
        ("http://198.18.0.1/", "non-public"),  # benchmarking
        ("http://[fec0::1]/", "site-local"),
        # IPv4 inside IPv6: judged as the IPv4 address the packets go to.
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4
        ("http://[::127.0.0.1]/", "reserved"),  # IPv4-compatible (deprecated)
    ],
)
def test_default_policy_refuses_every_non_public_literal(url: str, kind: str) -> None:
    why = refused(url)
    assert f"{kind} address" in why, why
    assert "WEBHOOK_ALLOWED_HOSTS" in why


@pytest.mark.parametrize(
    ("host", "means"),
    [
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f000001", "127.0.0.1"),  # hex
        ("017700000001", "127.0.0.1"),  # octal
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("3232235777", "192.168.1.1"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("134744072", "8.8.8.8"),  # public, but still not the way to write it
    ],
)
def test_legacy_numeric_forms_mean_their_address_and_are_refused(host: str, means: str) -> None:
    assert ipv4_legacy(host.lower()) == IPv4Address(means)
    why = refused(f"http://{host}/x")
    assert "non-canonical IPv4" in why and means in why


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://...", "not a valid host name"),  # the README's own placeholder
        ("https://.../hook", "not a valid host name"),
        ("http://-bad-.example/", "not a valid host name"),
        ("http://999.1.1.1/", "not a valid host name"),
        ("http://1.2.3.4.5/", "not a valid host name"),
        ("http://08.1/", "not a valid host name"),  # 8 is not octal
        ("http://user:pw@example.com/", "credentials"),
        ("https://example.com/h?a=1&Access_Token=EAAx", "access_token"),
        ("http://example.com@127.0.0.1/", "credentials"),
        ("http://a b/", "printable ASCII"),
        ("http://example.com\\@127.0.0.1/", "backslashes"),
        ("http://bücher.example/", "printable ASCII"),
        ("http://[::1/", "host[:port]"),
        ("http://[zz::1]/", "host[:port]"),
        ("http://[1:2:3]/", "not an IPv6 address"),
        ("http://[fe80::1%25eth0]/", "host[:port]"),
        ("http://example.com:0/", "out of range"),
        ("http://example.com:65536/", "out of range"),
        ("http://example.com:x/", "host[:port]"),
        ("http:///path", "host[:port]"),
        ("ftp://example.com/", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("//example.com/", "http:// or https://"),
        ("", "non-empty"),
        ("http://" + "a" * 2100, "longer than"),
    ],
)
def test_syntax_is_strict(url: str, why: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        parse_target(url)
    assert why in str(info.value)


def test_parse_normalises_what_comparisons_need() -> None:
    t = parse_target("  HTTPS://Hooks.Example.COM.:8443/a?b=1#c ")
    assert (t.scheme, t.host, t.port, t.address) == ("https", "hooks.example.com", 8443, None)
    assert t.url == "HTTPS://Hooks.Example.COM.:8443/a?b=1#c"
    assert parse_target("http://[::FFFF:127.0.0.1]/").host == "::ffff:7f00:1"
    assert parse_target("http://example.com/").port == 80


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_class(ip_address(address)) is None
    assert address_refusal(ip_address(address), DEFAULT) is None


def test_allowlist_names_wildcards_ips_and_cidrs() -> None:
    policy = WebhookPolicy.parse(
        "receiver.internal, *.svc.cluster.local, 127.0.0.1, 10.20.0.0/16, [::1], fd00::/8"
    )
    assert policy.allows_host("Receiver.Internal.")
    assert policy.allows_host("hooks.team.svc.cluster.local")
    assert not policy.allows_host("svc.cluster.local")  # *. means a subdomain
    assert not policy.allows_host("evilsvc.cluster.local")
    check_target(parse_target("http://127.0.0.1:9000/"), policy)
    check_target(parse_target("http://[::ffff:127.0.0.1]/"), policy)  # the same address
    check_target(parse_target("http://10.20.3.4/"), policy)
    check_target(parse_target("http://[::1]/"), policy)
    check_target(parse_target("http://[fd00::5]/"), policy)
    assert "private address" in refused("http://10.21.0.1/", policy)
    assert "loopback" in refused("http://127.0.0.2/", policy)


def test_allow_private_opens_private_networks_only() -> None:
    policy = WebhookPolicy(allow_private=True)
    for url in (
        "http://10.0.0.5/",
        "http://172.16.0.1/",
        "http://[fd00::1]/",
        "http://100.64.1.1/",
    ):
        check_target(parse_target(url), policy)
    # This host and the cloud metadata service stay closed: only the allowlist opens them.
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/", "http://0.0.0.0/"):
        assert "WEBHOOK_ALLOWED_HOSTS" in refused(url, policy)


@pytest.mark.parametrize(
    ("allowed", "why"),
    [
        ("not a host", "neither a host name"),
        ("10.0.0.0/40", "neither a host name"),
        ("*.", "neither a host name"),
        ("a,,b,*.x..y", "neither a host name"),
        (",".join(["a.b"] * 300), "at most 256"),
    ],
)
def test_a_bad_allowlist_is_a_setting_error(allowed: str, why: str) -> None:
    settings = make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:1/v1.0")
    with pytest.raises(SettingsError, match="WEBHOOK_ALLOWED_HOSTS") as info:
        webhook_policy(settings.model_copy(update={"webhook_allowed_hosts": allowed}))
    assert why in str(info.value)


def test_signing_unknown_asks_and_known_false_refuses() -> None:
    base = make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:1/v1.0")
    assert webhook_policy(base).signing is None  # a producer without the secret: ask the workers
    assert webhook_policy(base, worker=True).signing is False
    signed = base.model_copy(update={"webhook_secret": "s3cret-value"})
    assert webhook_policy(signed).signing is True
    why = refused("https://hooks.example.com/", WebhookPolicy(signing=False))
    assert "WEBHOOK_SECRET" in why


# ----- the enqueue check with a resolver that answers from a table -------------------------


class Table:
    """A resolver answering from a table, counting the lookups."""

    def __init__(self, answers: Mapping[str, Sequence[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        return [ip_address(a) for a in self.answers.get(host, ())]


def check(url: str, policy: WebhookPolicy, answers: Mapping[str, Sequence[str]]) -> str:
    return asyncio.run(check_webhook_url(url, policy, resolve=Table(answers)))


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    answers = {
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "rebind.example": ["93.184.216.34", "127.0.0.1"],
        "metadata.example": ["169.254.169.254"],
        "internal.example": ["10.1.2.3"],
    }
    assert check("https://public.example/h", DEFAULT, answers) == "https://public.example/h"
    for host, kind in [
        ("rebind.example", "loopback"),
        ("metadata.example", "link-local"),
        ("internal.example", "private"),
    ]:
        with pytest.raises(InvalidIdError, match=f"{host} resolves to an? {kind} address"):
            check(f"https://{host}/h", DEFAULT, answers)
    # Allowed by name: not even looked up.
    policy = WebhookPolicy.parse("internal.example")
    resolve = Table(answers)
    asyncio.run(check_webhook_url("http://internal.example/", policy, resolve=resolve))
    assert resolve.calls == []
    # A name that does not resolve here is left to the delivery's check.
    assert check("https://nowhere.example/", DEFAULT, answers) == "https://nowhere.example/"


def test_one_lookup_per_host_and_a_verdict_per_url() -> None:
    answers = {"a.example": ["8.8.8.8"], "b.example": ["10.0.0.1"]}
    resolve = Table(answers)
    urls = [
        "http://a.example/1",
        "http://a.example/2",
        "http://b.example/",
        "ftp://x/",
        "http://a.example/1",
    ]
    verdicts = asyncio.run(check_webhook_urls(urls, DEFAULT, resolve=resolve))
    assert verdicts["http://a.example/1"] == "http://a.example/1"
    assert verdicts["http://a.example/2"] == "http://a.example/2"
    assert isinstance(verdicts["http://b.example/"], InvalidIdError)
    assert isinstance(verdicts["ftp://x/"], InvalidIdError)
    assert sorted(resolve.calls) == ["a.example", "b.example"]


def test_a_hanging_lookup_is_bounded() -> None:
    async def hang(host: str, port: int) -> list[IPAddress]:
        await asyncio.sleep(60)
        return []

    out = asyncio.run(
        check_webhook_urls(["http://slow.example/"], DEFAULT, resolve=hang, lookup_timeout=0.05)
    )
    assert out == {"http://slow.example/": "http://slow.example/"}


# ----- arbitrary input: a typed error, never another exception -----------------------------


@given(st.text(max_size=300))
def test_parse_target_on_any_text(raw: str) -> None:
    try:
        target = parse_target(raw)
        check_target(target, DEFAULT)
    except InvalidIdError:
        return


@given(
    st.from_regex(
        r"\Ahttps?://(\[[0-9a-fA-F:.%]{0,40}\]|[0-9a-zA-Z.x_-]{0,40})(:[0-9]{0,6})?[/?#]?.{0,20}\Z"
    )
)
def test_parse_target_on_url_shaped_text(raw: str) -> None:
    try:
        target = parse_target(raw)
    except InvalidIdError:
        return
    # What passes is what aiohttp will connect to: host and port agree with yarl's reading.
    from yarl import URL

    url = URL(target.url)
    assert (url.raw_host or "").lower().removesuffix(".") == target.host
    assert url.port == target.port


@given(st.text(max_size=200))
def test_allowlist_on_any_text(raw: str) -> None:
    try:
        WebhookPolicy.parse(raw)
    except ValueError:
        return
