"""The one check of a webhook URL at enqueue: the rules of ``worker.core.targets`` plus the DNS
lookup they leave to the edge. The Python client (and so the CLI) and the intake consumer both
call ``check_webhook_urls`` before they enqueue through the store.

The lookup runs on the event loop's resolver (``loop.getaddrinfo``, a thread), never blocking
the loop, under a time limit. A name that does not resolve here is let through: the producer may
not see the receivers' DNS, and the delivery checks again against the addresses it connects to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

from worker.core.errors import InvalidIdError
from worker.core.targets import (
    IPAddress,
    WebhookPolicy,
    check_addresses,
    check_target,
    needs_lookup,
    parse_address,
    parse_target,
)

log = logging.getLogger("threads_poller.targets")

# host, port -> the addresses it resolves to (empty: it does not resolve).
Resolve = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
LOOKUP_TIMEOUT_SECONDS = 5.0


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """``getaddrinfo`` on the running loop's executor; [] when the name does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    found: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = parse_address(str(sockaddr[0]))
            if isinstance(sockaddr, tuple) and len(sockaddr) >= 4 and sockaddr[3]:
                # A link-local IPv6 answer carries its interface: keep it a scoped address.
                address = parse_address(f"{sockaddr[0]}%{sockaddr[3]}")
            found.append(address)
    return found


async def check_webhook_urls(
    urls: Iterable[str],
    policy: WebhookPolicy,
    *,
    resolve: Resolve | None = None,
    lookup_timeout: float = LOOKUP_TIMEOUT_SECONDS,
) -> dict[str, str | InvalidIdError]:
    """Each distinct URL -> its checked form, or the InvalidIdError that refuses it.

    One lookup per distinct host, all at once."""
    lookup = resolve or system_resolve
    out: dict[str, str | InvalidIdError] = {}
    targets = {}
    for url in dict.fromkeys(urls):
        try:
            target = parse_target(url)
            check_target(target, policy)
        except InvalidIdError as exc:
            out[url] = exc
            continue
        targets[url] = target
    hosts = sorted({(t.host, t.port) for t in targets.values() if needs_lookup(t, policy)})

    async def one(host: str, port: int) -> Sequence[IPAddress]:
        try:
            return await asyncio.wait_for(lookup(host, port), lookup_timeout)
        except TimeoutError:
            log.warning(
                "webhook host lookup timed out; the delivery checks it", extra={"host": host}
            )
            return []

    answers = dict(zip(hosts, await asyncio.gather(*(one(h, p) for h, p in hosts)), strict=True))
    for url, target in targets.items():
        try:
            if needs_lookup(target, policy):
                check_addresses(target, answers[target.host, target.port], policy)
        except InvalidIdError as exc:
            out[url] = exc
            continue
        out[url] = target.url
    return out


async def check_webhook_url(
    url: object, policy: WebhookPolicy, *, resolve: Resolve | None = None
) -> str:
    """``check_webhook_urls`` of one URL: its checked form, or InvalidIdError."""
    if not isinstance(url, str):
        parse_target(url)  # raises: not a string
    assert isinstance(url, str)
    verdict = (await check_webhook_urls([url], policy, resolve=resolve))[url]
    if isinstance(verdict, InvalidIdError):
        raise verdict
    return verdict
