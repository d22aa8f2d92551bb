"""serve's doors (issue 21): without keys it obeys no web page, streams and long polls are
counted before any await, malformed bodies are 4xx, console sessions end at logout."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from redis.asyncio import Redis

from config import Settings
from tests.helpers.waiting import wait_until
from tests.web_helpers import RO_KEY, RW_KEY, Api, running_api
from worker.web.console import SESSION_COOKIE


async def raw(
    api: Api, method: str, path: str, headers: dict[str, str], data: bytes = b""
) -> tuple[int, Any]:
    """A request with exactly these headers (Host included), no client defaults."""
    async with api.http.request(
        method, api.base + path, headers=headers, data=data, allow_redirects=False
    ) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


def code(body: Any) -> str:
    assert isinstance(body, dict), body
    return str(body["error"]["code"])


async def test_without_keys_no_web_page_steers_the_server(redis: Redis, settings: Settings) -> None:
    async with running_api(settings, write=(), read=()) as api:
        await api.post(
            "/v1/containers", key=None, json={"container_id": "21001"}, headers={"Origin": api.base}
        )
        port = api.base.rsplit(":", 1)[1]
        # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1.
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}"):
            status, body = await raw(api, "GET", "/v1/inflight", {"Host": host})
            assert (status, code(body)) == (403, "host_not_allowed"), host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            status, _ = await raw(api, "GET", "/v1/inflight", {"Host": host})
            assert status == 200, host
        # A cross-site page's "simple" POST (no preflight): refused, nothing cancelled.
        cancel = "/v1/containers/21001/cancel"
        for headers in (
            {"Content-Type": "text/plain", "Origin": "https://evil.example"},
            {"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},
            {"Content-Type": "text/plain"},  # says nothing: not taken for one of ours
            {"Origin": "null"},
        ):
            status, body = await raw(api, "POST", cancel, headers)
            assert (status, code(body)) == (403, "csrf_failed"), headers
        status, body = await raw(api, "DELETE", "/v1/dead-letters/intake/1-0", {})
        assert (status, code(body)) == (403, "csrf_failed")
        status, body = await raw(api, "POST", "/console/act", {"Origin": "https://evil.example"})
        assert (status, code(body)) == (403, "csrf_failed")
        got = await api.get("/v1/containers/21001", key=None)
        assert got.body["status"] != "CANCELLED"
        # Our own page (or a client that says it is one) may.
        for headers in ({"Origin": api.base}, {"Sec-Fetch-Site": "same-origin"}):
            status, body = await raw(api, "POST", "/v1/containers/999/cancel", headers)
            assert (status, code(body)) == (404, "container_not_found"), headers


async def test_malformed_bodies_are_4xx_and_read_only_after_authentication(
    redis: Redis, settings: Settings, caplog: Any
) -> None:
    bad = {"Content-Type": 'multipart/form-data; boundary="unterminated'}
    async with running_api(settings) as api:
        # Anonymous: refused on its credentials, its body never parsed.
        for path in ("/v1/containers/1/cancel", "/console/act"):
            status, body = await raw(api, "POST", path, bad, b"--x\r\n\r\n")
            assert (status, code(body)) == (401, "unauthorized"), path
        own = {"Origin": api.base}
        status, body = await raw(api, "POST", "/login", {**bad, **own}, b"--x\r\n")
        assert (status, code(body)) == (400, "malformed_body")
        async with api.http.post(
            api.base + "/login", data={"key": RW_KEY}, headers=own, allow_redirects=False
        ) as resp:
            session = resp.cookies[SESSION_COOKIE].value
        jar = {"Cookie": f"{SESSION_COOKIE}={session}", **own}
        for boundary in ('"unterminated', "", "x" * 80):
            status, body = await raw(
                api,
                "POST",
                "/console/act",
                {**jar, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                b"--x\r\nContent-Disposition: form-data\r\n\r\n",
            )
            assert status == 400 and code(body) == "malformed_body", (boundary, body)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_a_session_ends_at_logout_and_is_secure_behind_a_trusted_proxy(
    redis: Redis, settings: Settings
) -> None:
    async with running_api(settings) as api:
        own = {"Origin": api.base}
        async with api.http.post(
            api.base + "/login", data={"key": RW_KEY}, headers=own, allow_redirects=False
        ) as resp:
            session = resp.cookies[SESSION_COOKIE].value
            assert "Secure" not in resp.headers["Set-Cookie"]
        copied = {"Cookie": f"{SESSION_COOKIE}={session}"}
        status, _ = await raw(api, "GET", "/v1/inflight", copied)
        assert status == 200
        # A change with the session also needs our own page's Origin (and the CSRF token).
        async with api.http.get(api.base + "/", headers=copied) as resp:
            page = await resp.text()
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        status, body = await raw(
            api,
            "POST",
            "/v1/containers/1/cancel",
            {**copied, "X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        )
        assert (status, code(body)) == (403, "csrf_failed")
        status, _ = await raw(api, "POST", "/logout", {**copied, **own})
        assert status == 303
        # Whoever copied the cookie before the logout holds nothing now.
        status, body = await raw(api, "GET", "/v1/inflight", copied)
        assert (status, code(body)) == (401, "unauthorized")
        # X-Forwarded-Proto is believed only with TRUSTED_PROXY.
        https = {**own, "X-Forwarded-Proto": "https"}
        async with api.http.post(
            api.base + "/login", data={"key": RW_KEY}, headers=https, allow_redirects=False
        ) as resp:
            assert "Secure" not in resp.headers["Set-Cookie"]
    proxied = settings.model_copy(update={"trusted_proxy": True})
    async with running_api(proxied) as api:
        https = {"Origin": api.base, "X-Forwarded-Proto": "https"}
        async with api.http.post(
            api.base + "/login", data={"key": RW_KEY}, headers=https, allow_redirects=False
        ) as resp:
            assert "Secure" in resp.headers["Set-Cookie"]


async def open_streams(api: Api, n: int, key: str) -> list[tuple[int, str | None]]:
    """``n`` event streams asked for at once, each held open until every one was answered:
    (status, Retry-After) of each."""
    release = asyncio.Event()
    answered = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> tuple[int, str | None]:
            nonlocal answered
            async with http.get(
                api.base + "/v1/events",
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                answered += 1
                if resp.status == 200:
                    await release.wait()
                return resp.status, resp.headers.get("Retry-After")

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        try:
            await wait_until(lambda: answered == n, timeout=30)
        finally:
            release.set()
        return [await t for t in tasks]


async def redis_clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["connected_clients"])


async def test_streams_and_long_polls_are_counted_before_any_await(
    redis: Redis, settings: Settings
) -> None:
    before = await redis_clients(redis)
    roomy = settings.model_copy(update={"api_max_waits_per_key": 1000})
    async with running_api(roomy, sample=False) as api:
        got = await open_streams(api, 250, RW_KEY)
        opened = [g for g in got if g[0] == 200]
        refused = [g for g in got if g[0] != 200]
        assert len(opened) == 64, len(opened)  # API_MAX_EVENT_STREAMS
        assert {g for g in refused} == {(503, "5")}
    assert api.ctx.streams == 0
    assert await redis_clients(redis) <= before + 2

    tight = settings.model_copy(update={"api_max_long_polls": 5, "api_max_waits_per_key": 3})
    async with running_api(tight, sample=False) as api:
        await api.post("/v1/containers", json={"container_id": "21101"})
        path = "/v1/containers/21101?wait=3"
        # Per key: the fourth of one key is 429, another key still gets in.
        calls = [api.get(path, key=RW_KEY) for _ in range(4)] + [
            api.get(path, key=RO_KEY) for _ in range(3)
        ]
        answers = await asyncio.gather(*calls)
        statuses = sorted(a.status for a in answers)
        assert statuses == [202, 202, 202, 202, 202, 429, 503], statuses
        for a in answers:
            if a.status in (429, 503):
                assert a.headers["Retry-After"] == "5"
                assert a.code() in ("too_many_requests", "too_many_long_polls")
        assert api.ctx.long_polls == 0 and api.ctx.waits_by_key == {}
        # What serve holds of Redis stays within its pools' bounds, whatever came in.
        bound = tight.api_redis_max_connections + 5 + tight.api_max_event_streams + 1
        assert await redis_clients(redis) <= before + bound


async def test_per_key_cap_on_event_streams(redis: Redis, settings: Settings) -> None:
    capped = settings.model_copy(update={"api_max_waits_per_key": 4})
    async with running_api(capped, sample=False) as api:
        got = await open_streams(api, 6, RO_KEY)
        assert sorted(got) == [(200, None)] * 4 + [(429, "5")] * 2
        # Another key is not held back by this one.
        assert (await open_streams(api, 2, RW_KEY)) == [(200, None)] * 2
