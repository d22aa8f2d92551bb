"""The HTTP edge: one long-lived aiohttp session, requests out, typed values or typed errors in."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import aiohttp
from yarl import URL

from api_client.errors import (
    MalformedResponseError,
    NetworkError,
    RequestTimeoutError,
    ThreadsError,
)
from api_client.models import ContainerStatus, PublishingLimit
from api_client.parsing import (
    parse_container_status,
    parse_publish,
    parse_publishing_limit,
)
from api_client.platforms import THREADS, Platform
from api_client.redact import redact
from api_client.usage import parse_usage_headers

STATUS_FIELDS = THREADS.status_fields
# Bodies we expect are a few hundred bytes; a huge one is an error page or an attack.
MAX_BODY_BYTES = 1 << 20
USER_AGENT = "threads-poller/0.1 (+aiohttp)"
T = TypeVar("T")

# A path and query made only of characters that URL encoding leaves as they are (RFC 3986's
# unreserved ones, plus "/" between path segments and "," in query values, which yarl keeps):
# such a URL is sent as we write it (``request_url``). No "." in the path: yarl resolves "."
# and ".." segments.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_~-]+)+")
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9._~,-]*")


def plain_base(base_url: str) -> URL | None:
    """The base URL as yarl holds it, when ``request_url`` may build on it: written as aiohttp
    would send it, with no user, query or fragment, and the URLs built on it the same as
    aiohttp's (checked once, here); else None."""
    base = URL(base_url)
    if str(base) != base_url or base.user or base.password or base.query_string or base.fragment:
        return None
    probe = {"fields": "status", "access_token": "t"}
    if request_url(base, "/1", probe) != URL(base_url + "/1").extend_query(probe):
        return None
    return base


def request_url(base: URL, path: str, query: Mapping[str, str]) -> URL | None:
    """The request's URL, already encoded, when no part of it needs encoding (a container id,
    a token of letters and digits); else None, and aiohttp encodes it as usual. ``base``: from
    ``plain_base``.

    Why: aiohttp parses and encodes a URL string and then its query on every request, about
    2 % of a check's CPU (README, "Where a check's CPU goes beyond the floor"); a URL that
    encoding leaves as it is can be handed over as it is (``encoded=True``), built from its
    parts (yarl splits a URL string even when it is encoded). The URL is the same either way
    (tests/unit/test_request_url.py)."""
    if not _PLAIN_PATH.fullmatch(path):
        return None
    for key, value in query.items():
        if not (_PLAIN_QUERY.fullmatch(key) and _PLAIN_QUERY.fullmatch(value)):
            return None
    return URL.build(
        scheme=base.scheme,
        host=base.raw_host or "",
        port=base.explicit_port,
        path=base.raw_path.rstrip("/") + path,
        query_string="&".join(f"{key}={value}" for key, value in query.items()),
        encoded=True,
    )


def make_session(*, timeout_seconds: float, max_connections: int = 100) -> aiohttp.ClientSession:
    """The worker's single session: pooled keep-alive connections, one timeout per request."""
    connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
        # The Graph API is token-authenticated; a jar would only cost a filter per request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _read_body(resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
    """The whole body, up to MAX_BODY_BYTES (``content.read(n)`` may return just one chunk)."""
    length = resp.content_length
    if length is not None and length <= MAX_BODY_BYTES:
        # aiohttp stops at Content-Length, so the limit holds without counting chunks.
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise MalformedResponseError(
                f"{method} {path}: reply larger than {MAX_BODY_BYTES} bytes",
                http_status=resp.status,
            )
        chunks.append(chunk)
    return b"".join(chunks)


class ThreadsClient:
    """Calls of the Graph API that threads-poller makes, on one platform (Threads by default,
    or Instagram: ``api_client.platforms``), whose field names and edges it uses.

    The token is given per call (each account has its own), and it is sent as the documented
    ``access_token`` query parameter or, with ``auth_header=True``, as a Bearer header.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        auth_header: bool = False,
        timeout_seconds: float | None = None,
        platform: Platform = THREADS,
    ) -> None:
        self._session = session
        self.platform = platform
        self._status_fields = platform.status_fields
        self._base_url = base_url.rstrip("/")
        # The base URL when ``request_url`` may skip the encoding (a base URL that needs some
        # goes the usual way).
        self._plain_base = plain_base(self._base_url)
        self._auth_header = auth_header
        self._timeout = (
            aiohttp.ClientTimeout(total=timeout_seconds) if timeout_seconds is not None else None
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    async def get_container_status(self, container_id: str, *, token: str) -> ContainerStatus:
        http_status, body, headers = await self.request(
            "GET", f"/{container_id}", params={"fields": self._status_fields}, token=token
        )
        usage = parse_usage_headers(headers)
        try:
            status = parse_container_status(container_id, http_status, body, self.platform)
        except ThreadsError as exc:
            exc.usage = usage
            exc.platform = self.platform.name.value
            raise
        return dataclasses.replace(status, usage=usage) if usage else status

    async def get_publishing_limit(self, user_id: str, *, token: str) -> PublishingLimit:
        """Every quota block of one profile the platform has (Threads: posts, replies, deletes,
        location searches; Instagram: posts)."""
        http_status, body, _ = await self.request(
            "GET",
            f"/{user_id}/{self.platform.quota_edge}",
            params={"fields": self.platform.quota_fields},
            token=token,
        )
        return self._tagged(parse_publishing_limit, http_status, body)

    async def publish(self, user_id: str, creation_id: str, *, token: str) -> str:
        """``POST /{user-id}/threads_publish`` (Instagram: ``media_publish``): the published
        media id.

        Not retried here, ever: a retry after an ambiguous failure could publish twice.
        """
        http_status, body, _ = await self.request(
            "POST",
            f"/{user_id}/{self.platform.publish_edge}",
            params={"creation_id": creation_id},
            token=token,
        )
        return self._tagged(parse_publish, http_status, body)

    def _tagged(self, parse: Callable[[int, bytes], T], http_status: int, body: bytes) -> T:
        """``parse``'s value, or its error marked with this client's platform (what an error
        code means can depend on it: ``policy.classify``)."""
        try:
            return parse(http_status, body)
        except ThreadsError as exc:
            exc.platform = self.platform.name.value
            raise

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange. Every failure leaves as a ``ThreadsError`` with a redacted message."""
        try:
            return await self._exchange(method, path, token=token, params=params)
        except ThreadsError as exc:
            exc.platform = self.platform.name.value
            raise

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        token: str,
        params: Mapping[str, str] | None,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        query = dict(params or {})
        headers: dict[str, str] = {}
        if self._auth_header:
            headers["Authorization"] = f"Bearer {token}"
        else:
            query["access_token"] = token
        url: str | URL | None = (
            request_url(self._plain_base, path, query) if self._plain_base is not None else None
        )
        to_encode: dict[str, str] | None = None
        if url is None:
            url, to_encode = self._base_url + path, query
        # aiohttp reads timeout=None as "no timeout": fall back to the session's own timeout.
        timeout = self._timeout or self._session.timeout
        try:
            async with self._session.request(
                method, url, params=to_encode, headers=headers or None, timeout=timeout
            ) as resp:
                body = await _read_body(resp, method, path)
                return resp.status, body, dict(resp.headers)
        except TimeoutError:
            raise RequestTimeoutError(f"{method} {path}: no answer within the timeout") from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages can carry the full URL, query string included: redact, and do
            # not chain the original exception, whose text would be printed with tracebacks.
            detail = redact(f"{type(exc).__name__}: {exc}", (token,))
            sent = not isinstance(exc, aiohttp.ClientConnectorError)
            raise NetworkError(f"{method} {path}: {detail}", request_sent=sent) from None
        except asyncio.CancelledError:
            raise
        except (ValueError, OSError) as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", (token,))
            raise NetworkError(f"{method} {path}: {detail}") from None

    @staticmethod
    def scrub(error: ThreadsError, token: str) -> ThreadsError:
        """Last line of defence for text that came from the server (it could echo a token)."""
        error.message = redact(error.message, (token,))
        error.args = (error.message,)
        return error
