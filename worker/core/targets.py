"""Where a webhook may be sent: the SSRF guard's rules, pure.

A producer chooses the URL a worker POSTs to from inside the deployment, so the URL is checked
twice against one policy: at enqueue (``worker.store.targets.check_webhook_url``: the client, the
CLI and the intake consumer) and at delivery, against the addresses the connection is actually
made to (``worker.jobs.webhook``'s resolver). This module holds what both agree on:

- ``parse_target``: the URL's syntax, strictly (printable ASCII, http/https, a host that is a
  valid name or IP literal, no credentials); anything a lenient parser might read differently
  is refused rather than interpreted.
- ``ipv4_legacy``: the numeric forms ``inet_aton`` still maps onto an address (``2130706433``,
  ``0x7f.1``, ``0177.0.0.1``, ``127.1``), so that they are judged as the address they mean.
- ``address_class`` / ``address_refusal``: loopback, private, link-local, multicast, reserved
  and every other non-public address, IPv4 inside IPv6 (mapped, 6to4, NAT64) included.
- ``WebhookPolicy``: ``WEBHOOK_ALLOWED_HOSTS`` (names, ``*.suffix`` names, IPs, CIDRs) and
  ``WEBHOOK_ALLOW_PRIVATE_ADDRESSES``.

No DNS here: the edges resolve names and hand the addresses to ``check_addresses``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from config import Settings, SettingsError
from worker.core.errors import InvalidIdError

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

MAX_URL_LENGTH = 2048
MAX_ALLOWED_ENTRIES = 256

# After "scheme://", up to the first "/", "?" or "#": a host and an optional port, nothing else.
_AUTHORITY = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?$")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMERIC_PART = re.compile(r"^(0[xX][0-9A-Fa-f]*|[0-9]+)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressClass(StrEnum):
    """Why an address is not public (the value is what a refusal says)."""

    UNSPECIFIED = "unspecified"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    MULTICAST = "multicast"
    PRIVATE = "private"
    SHARED = "carrier-grade NAT"
    SITE_LOCAL = "site-local"
    TEREDO = "Teredo"
    RESERVED = "reserved"
    NOT_GLOBAL = "non-public"


# What WEBHOOK_ALLOW_PRIVATE_ADDRESSES opens: other hosts on the deployment's own networks.
# Loopback (this host: sidecars, admin ports, Redis) and link-local (cloud metadata at
# 169.254.169.254) stay closed unless WEBHOOK_ALLOWED_HOSTS names them.
PRIVATE_CLASSES = frozenset({AddressClass.PRIVATE, AddressClass.SHARED, AddressClass.SITE_LOCAL})

_RFC1918 = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ip_network("fc00::/7")
_SHARED = ip_network("100.64.0.0/10")
_NAT64 = ip_network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A webhook URL that passed the syntax check."""

    url: str
    scheme: str
    host: str  # lower case, no brackets, no trailing dot
    port: int
    # The host as an address when it is an IP literal (in any numeric form), else None.
    address: IPAddress | None


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Where deliveries may go, and whether this side can sign them.

    ``signing``: False when it is known that the workers have no ``WEBHOOK_SECRET`` (a
    delivery could not be signed, so it would be dead-lettered much later); None when not known
    yet (a producer without the secret asks what the workers published)."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_suffixes: tuple[str, ...] = ()
    allowed_networks: tuple[Network, ...] = ()
    allow_private: bool = False
    signing: bool | None = None

    @classmethod
    def parse(
        cls,
        allowed: str | Sequence[str] = (),
        *,
        allow_private: bool = False,
        signing: bool | None = None,
    ) -> WebhookPolicy:
        """From ``WEBHOOK_ALLOWED_HOSTS`` (comma-separated) or a list; ValueError if malformed."""
        names, suffixes, networks = parse_allowlist(allowed)
        return cls(names, suffixes, networks, allow_private, signing)

    def allows_host(self, host: str) -> bool:
        """The host name (or IP literal as written) is allowed whatever it resolves to."""
        host = _normal_host(host)
        return host in self.allowed_hosts or any(
            host.endswith(suffix) for suffix in self.allowed_suffixes
        )


def webhook_policy(settings: Settings, *, worker: bool = False) -> WebhookPolicy:
    """The policy ``settings`` describe; SettingsError for a bad WEBHOOK_ALLOWED_HOSTS.

    A worker knows whether it can sign; a producer without the secret does not (None: it asks
    what the workers published, ``{prefix}:config``): producers need not hold the secret."""
    signing = settings.webhook_secret is not None
    try:
        return WebhookPolicy.parse(
            settings.webhook_allowed_hosts,
            allow_private=settings.webhook_allow_private_addresses,
            signing=signing if worker or signing else None,
        )
    except ValueError as exc:
        raise SettingsError(f"invalid setting WEBHOOK_ALLOWED_HOSTS: {exc}") from None


def parse_allowlist(
    allowed: str | Sequence[str],
) -> tuple[frozenset[str], tuple[str, ...], tuple[Network, ...]]:
    """Names, ``*.suffix`` names (kept as ".suffix") and networks; ValueError on a bad entry."""
    items = allowed.split(",") if isinstance(allowed, str) else list(allowed)
    items = [item.strip() for item in items if item.strip()]
    if len(items) > MAX_ALLOWED_ENTRIES:
        raise ValueError(f"at most {MAX_ALLOWED_ENTRIES} entries, got {len(items)}")
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[Network] = []
    for item in items:
        shown = item if len(item) <= 60 else item[:60] + "..."
        try:
            networks.append(ip_network(item.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        wildcard = item.startswith("*.")
        name = _normal_host(item[2:] if wildcard else item)
        if not _is_host_name(name):
            raise ValueError(f"{shown!r} is neither a host name, *.name, an IP address nor a CIDR")
        if wildcard:
            suffixes.append("." + name)
        else:
            names.add(name)
    return frozenset(names), tuple(suffixes), tuple(networks)


def _normal_host(host: str) -> str:
    return host.strip().lower().removesuffix(".")


def _is_host_name(host: str) -> bool:
    if not host or len(host) > 253 or not host.isascii():
        return False
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    # A last label of digits (or hex) is an attempt at an IP address, not a name.
    return not _NUMERIC_PART.match(labels[-1])


def ipv4_legacy(host: str) -> IPv4Address | None:
    """The address ``inet_aton`` reads in ``host`` (1 to 4 parts, each decimal, 0-prefixed
    octal or 0x hex, the last filling the remaining bytes), or None if it is not numeric."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not all(c in "01234567" for c in part):
                return None
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << 8 * (4 - len(head)) | last
    return IPv4Address(number)


def parse_target(raw: object) -> WebhookTarget:
    """The syntax check of a webhook URL; InvalidIdError with a reason a producer can act on."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidIdError("webhook url must be a non-empty string")
    url = raw.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidIdError(f"webhook url is longer than {MAX_URL_LENGTH} characters")
    if not all(33 <= ord(c) < 127 for c in url) or "\\" in url:
        # Spaces, control characters, backslashes and non-ASCII are where URL parsers disagree.
        raise InvalidIdError(
            "webhook url must be printable ASCII without spaces or backslashes "
            "(percent-encode the rest)"
        )
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise InvalidIdError("webhook url must be an absolute http:// or https:// URL")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise InvalidIdError(
            "webhook url must not carry credentials (user:password@); deliveries are "
            "authenticated by their signature"
        )
    if re.search(r"[?&;]access_token=", rest, re.IGNORECASE):
        # The Threads token's own parameter: it would be stored with the poll (and redacted,
        # so mangled, wherever it shows). A receiver authenticates deliveries by the signature.
        raise InvalidIdError(
            "webhook url must not carry an access_token parameter; deliveries are "
            "authenticated by their signature"
        )
    m = _AUTHORITY.match(authority)
    if m is None:
        shown = authority if len(authority) <= 60 else authority[:60] + "..."
        raise InvalidIdError(
            f"webhook url must be an absolute http:// or https:// URL with a host; "
            f"{shown!r} is not a host[:port]"
        )
    port = int(m["port"]) if m["port"] else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise InvalidIdError(f"webhook url port {port} is out of range")
    host = m["host"]
    if host.startswith("["):
        try:
            v6 = IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidIdError(f"webhook url host {host!r} is not an IPv6 address") from None
        return WebhookTarget(url, scheme, str(v6), port, v6)
    host = _normal_host(host)
    legacy = ipv4_legacy(host)
    if legacy is not None:
        return WebhookTarget(url, scheme, host, port, legacy)
    if not _is_host_name(host):
        shown = host if len(host) <= 60 else host[:60] + "..."
        raise InvalidIdError(
            f"webhook url host {shown!r} is not a valid host name or IP address "
            "(a placeholder such as https://...?)"
        )
    return WebhookTarget(url, scheme, host, port, None)


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one carries to (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_class(address: IPAddress) -> AddressClass | None:
    """None for a public address; otherwise what kind of non-public address it is."""
    if isinstance(address, IPv6Address):
        if address.scope_id:
            return AddressClass.LINK_LOCAL
        inner = _embedded_ipv4(address)
        if inner is not None:
            return address_class(inner)
        if address.teredo is not None:
            return AddressClass.TEREDO
        if address.is_site_local:
            return AddressClass.SITE_LOCAL
        if address in _ULA:
            return AddressClass.PRIVATE
    elif address in _SHARED:
        return AddressClass.SHARED
    elif any(address in net for net in _RFC1918):
        return AddressClass.PRIVATE
    for kind, flag in (
        (AddressClass.UNSPECIFIED, address.is_unspecified),
        (AddressClass.LOOPBACK, address.is_loopback),
        (AddressClass.LINK_LOCAL, address.is_link_local),
        (AddressClass.MULTICAST, address.is_multicast),
        (AddressClass.RESERVED, address.is_reserved),
    ):
        if flag:
            return kind
    if address.is_private or not address.is_global:
        return AddressClass.NOT_GLOBAL
    return None


def address_refusal(address: IPAddress, policy: WebhookPolicy) -> str | None:
    """None if ``policy`` lets deliveries go to ``address``; otherwise the reason."""
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    # ::ffff:a.b.c.d is a.b.c.d on the wire: an IPv4 allowlist entry covers it too.
    if mapped is not None and any(mapped in net for net in policy.allowed_networks):
        return None
    if any(address in net for net in policy.allowed_networks):
        return None
    kind = address_class(address)
    if kind is None or (policy.allow_private and kind in PRIVATE_CLASSES):
        return None
    if kind in PRIVATE_CLASSES:
        hint = "set WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true or list it in WEBHOOK_ALLOWED_HOSTS"
    else:
        hint = "list it in WEBHOOK_ALLOWED_HOSTS to allow it"
    article = "an" if kind.value[0] in "aeiou" else "a"
    return f"{article} {kind} address: {address} ({hint})"


def parse_address(text: str) -> IPAddress:
    """An address as a resolver returns it (an IPv6 zone as ``%eth0`` is kept as the scope)."""
    return ip_address(text)


def check_target(target: WebhookTarget, policy: WebhookPolicy) -> None:
    """The checks that need no DNS: the secret, an IP literal's address. InvalidIdError."""
    if policy.signing is False:
        raise InvalidIdError(
            "webhook url given but the workers have no WEBHOOK_SECRET: every delivery is "
            "signed with it, so none could be made (set WEBHOOK_SECRET or WEBHOOK_SECRET_FILE "
            "on the workers)"
        )
    address = target.address
    if isinstance(address, IPv4Address) and str(address) != target.host:
        # 2130706433, 0x7f.1, 0177.0.0.1, 127.1: inet_aton's legacy forms. HTTP clients differ
        # on them (aiohttp refuses them, others connect): only the dotted quad is accepted.
        raise InvalidIdError(
            f"webhook url refused: {target.host!r} is a non-canonical IPv4 address "
            f"(it means {address}); write {address}"
        )
    if address is not None and not policy.allows_host(target.host):
        reason = address_refusal(address, policy)
        if reason is not None:
            raise InvalidIdError(f"webhook url refused: its host is {reason}")


def needs_lookup(target: WebhookTarget, policy: WebhookPolicy) -> bool:
    """Whether the addresses the host name resolves to decide (after ``check_target``)."""
    return target.address is None and not policy.allows_host(target.host)


def check_addresses(
    target: WebhookTarget, addresses: Iterable[IPAddress], policy: WebhookPolicy
) -> None:
    """Every address the host resolves to must be allowed (one bad one is enough to refuse:
    which of them a later connection uses is not ours to choose)."""
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            raise InvalidIdError(f"webhook url refused: {target.host} resolves to {reason}")
