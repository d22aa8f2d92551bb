"""The simulator's Instagram side (/v23.0), exercised over real loopback HTTP beside Threads'."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from simulator import INSTAGRAM_API_PREFIX, RunningSimulator, StatusCall, run_simulator
from tests.helpers.graph import get_status

TOKEN = "ig-tok-SECRET-xyz789"
FIELDS = "status_code,status"
IG_USER = "17841400000000001"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(port=0) as running:
        yield running


async def ig_status(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    container_id: str,
    *,
    token: str | None = TOKEN,
    fields: str | None = FIELDS,
) -> tuple[int, Any]:
    return await get_status(http, sim.instagram_url, container_id, token=token, fields=fields)


async def ig_publish(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    container_id: str,
    user: str = IG_USER,
    token: str = TOKEN,
) -> tuple[int, Any]:
    params = {"creation_id": container_id, "access_token": token}
    async with http.post(f"{sim.instagram_url}/{user}/media_publish", params=params) as resp:
        return resp.status, await resp.json()


async def ig_quota(
    http: aiohttp.ClientSession, sim: RunningSimulator, fields: str | None, user: str = IG_USER
) -> tuple[int, Any]:
    params = {"access_token": TOKEN}
    if fields is not None:
        params["fields"] = fields
    url = f"{sim.instagram_url}/{user}/content_publishing_limit"
    async with http.get(url, params=params) as resp:
        return resp.status, await resp.json()


async def admin(
    http: aiohttp.ClientSession, sim: RunningSimulator, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, f"{sim.admin_url}{path}", json=body) as resp:
        return resp.status, await resp.json()


def error_of(body: Any) -> tuple[int, int | None]:
    return body["error"]["code"], body["error"].get("error_subcode")


# ----- status ------------------------------------------------------------------------------


async def test_the_routes_live_under_v23_beside_threads(sim: RunningSimulator) -> None:
    assert INSTAGRAM_API_PREFIX == "/v23.0"
    assert sim.instagram_url.endswith("/v23.0")
    assert sim.base_url.endswith("/v1.0")
    assert sim.instagram_url.rsplit("/", 1)[0] == sim.base_url.rsplit("/", 1)[0]


@pytest.mark.parametrize(
    ("step", "code", "text"),
    [
        ("IN_PROGRESS", "IN_PROGRESS", "In Progress: Media is still being processed."),
        (
            "FINISHED",
            "FINISHED",
            "Finished: Media has been uploaded and it is ready to be published.",
        ),
        ("PUBLISHED", "PUBLISHED", "Published: Media has been successfully published."),
        ("EXPIRED", "EXPIRED", "Expired: Media was not published within 24 hours."),
        ("ERROR:2207026", "ERROR", "Error: Media upload has failed with error code 2207026"),
        ("ERROR", "ERROR", "Error: Media upload has failed with error code 2207053"),
        ("ERROR:Video format not supported", "ERROR", "Video format not supported"),
    ],
)
async def test_status_code_and_status_text_per_state(
    sim: RunningSimulator, http: aiohttp.ClientSession, step: str, code: str, text: str
) -> None:
    sim.state.set_script("ig1", [step])
    status, body = await ig_status(http, sim, "ig1")
    assert status == 200
    assert body == {"status_code": code, "status": text, "id": "ig1"}


async def test_only_requested_fields_and_id_by_default(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("ig2", ["FINISHED"])
    assert (await ig_status(http, sim, "ig2", fields="status_code"))[1] == {
        "status_code": "FINISHED",
        "id": "ig2",
    }
    assert (await ig_status(http, sim, "ig2", fields=None))[1] == {"id": "ig2"}
    # The Bearer header works as on Threads.
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{sim.instagram_url}/ig2?fields=status_code"
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["status_code"] == "FINISHED"


async def test_an_unknown_field_is_error_100_and_spends_no_step(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("ig3", ["IN_PROGRESS", "FINISHED"])
    status, body = await ig_status(http, sim, "ig3", fields="status_code,error_message")
    assert status == 400
    assert error_of(body) == (100, None)
    assert body["error"]["message"] == (
        "Tried accessing nonexisting field (error_message) on node type (ShadowIGMediaBuilder)"
    )
    assert body["error"]["type"] == "OAuthException"
    assert (await ig_status(http, sim, "ig3"))[1]["status_code"] == "IN_PROGRESS"
    assert sim.state.calls_for("ig3").count == 2


async def test_one_script_drives_both_routes(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("both", ["IN_PROGRESS", "ERROR:2207026"])
    assert (await ig_status(http, sim, "both"))[1]["status_code"] == "IN_PROGRESS"
    async with http.get(
        f"{sim.base_url}/both", params={"access_token": TOKEN, "fields": "status,error_message"}
    ) as resp:
        assert await resp.json() == {"status": "ERROR", "id": "both", "error_message": "2207026"}
    assert (await ig_status(http, sim, "both"))[1]["status"] == (
        "Error: Media upload has failed with error code 2207026"
    )


async def test_fault_steps_and_notfound_render_on_instagram(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("f1", ["500", "html", "slow:0.05:FINISHED"])
    status, body = await ig_status(http, sim, "f1")
    assert (status, error_of(body)) == (500, (1, None))
    assert body["error"]["type"] == "OAuthException"  # Threads' THApiException, rendered
    async with http.get(f"{sim.instagram_url}/f1", params={"access_token": TOKEN}) as resp:
        assert (resp.status, resp.content_type) == (502, "text/html")
    assert (await ig_status(http, sim, "f1"))[1]["status_code"] == "FINISHED"
    status, body = await ig_status(http, sim, "nobody")  # the default script: notfound
    assert (status, error_of(body)) == (400, (100, 33))
    assert "'nobody'" in body["error"]["message"]


async def test_tokens_are_checked_as_on_threads(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("t1", ["FINISHED"])
    tokens = {"valid": {TOKEN: IG_USER}, "expired": {"old-ig": IG_USER}}
    assert (await admin(http, sim, "PUT", "/tokens", tokens))[0] == 200
    assert (await ig_status(http, sim, "t1"))[0] == 200
    for token, subcode in (("old-ig", 463), ("who-is-this", 467)):
        status, body = await ig_status(http, sim, "t1", token=token)
        assert (status, error_of(body)) == (400, (190, subcode))
        assert token not in json.dumps(body)
        status, body = await ig_publish(http, sim, "t1", token=token)
        assert (status, error_of(body)) == (400, (190, subcode))
    status, body = await ig_status(http, sim, "t1", token=None)
    assert error_of(body)[0] == 190
    assert sim.state.calls_for("t1").publishes == 0


# ----- quota -------------------------------------------------------------------------------


async def test_content_publishing_limit_total_settable(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    status, body = await ig_quota(http, sim, "quota_usage,config")
    assert status == 200
    assert body == {
        "data": [{"quota_usage": 0, "config": {"quota_total": 100, "quota_duration": 86400}}]
    }
    assert (await ig_quota(http, sim, None))[1] == {"data": [{"quota_usage": 0}]}
    assert (await ig_quota(http, sim, "config"))[1]["data"][0] == {
        "config": {"quota_total": 100, "quota_duration": 86400}
    }

    put = {"platform": "instagram", "quota_total": 50, "quota_usage": 7}
    status, shown = await admin(http, sim, "PUT", f"/quota/{IG_USER}", put)
    assert status == 200
    assert shown == {
        "quota_usage": 7,
        "quota_total": 50,
        "quota_duration": 86400,
        "offset": 7,
        "published_24h": 0,
    }
    assert (await ig_quota(http, sim, "quota_usage,config"))[1]["data"][0] == {
        "quota_usage": 7,
        "config": {"quota_total": 50, "quota_duration": 86400},
    }
    put = {"platform": "instagram", "quota_total": 100}
    assert (await admin(http, sim, "PUT", f"/quota/{IG_USER}", put))[1]["quota_total"] == 100
    assert (await ig_quota(http, sim, "quota_usage,config"))[1]["data"][0] == {
        "quota_usage": 7,
        "config": {"quota_total": 100, "quota_duration": 86400},
    }
    got = await admin(http, sim, "GET", f"/quota/{IG_USER}?platform=instagram")
    assert got == (200, {**shown, "quota_total": 100})
    # Threads' figures are apart, and its totals are not settable.
    assert (await admin(http, sim, "GET", f"/quota/{IG_USER}"))[1]["quota_usage"] == 0
    status, body = await admin(http, sim, "PUT", f"/quota/{IG_USER}", {"quota_total": 5})
    assert status == 400 and "instagram" in body["error"]
    bad = {"platform": "instagram", "reply_quota_usage": 1}
    assert (await admin(http, sim, "PUT", f"/quota/{IG_USER}", bad))[0] == 400
    assert (await admin(http, sim, "PUT", f"/quota/{IG_USER}", {"platform": "x"}))[0] == 400


async def test_publishes_count_and_a_spent_quota_answers_the_daily_limit(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("q*", ["FINISHED"])
    put = {"platform": "instagram", "quota_total": 50, "quota_usage": 48}
    assert (await admin(http, sim, "PUT", f"/quota/{IG_USER}", put))[0] == 200
    assert (await ig_publish(http, sim, "q1"))[0] == 200
    assert (await ig_quota(http, sim, "quota_usage"))[1] == {"data": [{"quota_usage": 49}]}
    assert (await ig_publish(http, sim, "q2"))[0] == 200
    status, body = await ig_publish(http, sim, "q3")
    assert (status, error_of(body)) == (400, (9, 2207042))
    assert "maximum number of posts" in body["error"]["error_user_msg"]
    assert sim.state.calls_for("q3").publishes == 0
    assert (await ig_status(http, sim, "q3"))[1]["status_code"] == "FINISHED"
    # A Threads publish of the same user spends Threads' quota, not Instagram's.
    params = {"creation_id": "q4", "access_token": TOKEN}
    async with http.post(f"{sim.base_url}/{IG_USER}/threads_publish", params=params) as resp:
        assert resp.status == 200
    assert sim.state.ig_quota_of(IG_USER)["published_24h"] == 2


# ----- publish -----------------------------------------------------------------------------


async def test_media_publish_once_then_published(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("p1", ["IN_PROGRESS", "FINISHED"])
    status, body = await ig_publish(http, sim, "p1")
    assert (status, error_of(body)) == (400, (24, 4279009))
    assert (await ig_status(http, sim, "p1"))[1]["status_code"] == "IN_PROGRESS"
    assert (await ig_status(http, sim, "p1"))[1]["status_code"] == "FINISHED"
    status, body = await ig_publish(http, sim, "p1", user="me")
    assert status == 200 and set(body) == {"id"} and body["id"].isdigit()
    assert sim.state.published_media_id("p1") == body["id"]
    assert (await ig_status(http, sim, "p1"))[1] == {
        "status_code": "PUBLISHED",
        "status": "Published: Media has been successfully published.",
        "id": "p1",
    }
    # Twice is refused: the container is no longer FINISHED; nothing goes out again.
    status, body = await ig_publish(http, sim, "p1")
    assert (status, error_of(body)) == (400, (24, 4279009))
    calls = sim.state.calls_for("p1")
    assert (calls.publish_calls, calls.publishes) == (3, 1)
    # "me" is the token's account: any token is accepted, as account "default".
    assert sim.state.ig_quota_of("default")["published_24h"] == 1
    async with http.post(f"{sim.instagram_url}/{IG_USER}/media_publish", data={}) as resp:
        assert resp.status == 400  # no token
    form = {"creation_id": "p1", "access_token": TOKEN}
    async with http.post(f"{sim.instagram_url}/{IG_USER}/media_publish", data=form) as resp:
        assert resp.status == 400  # the form body is read too: a double publish


@pytest.mark.parametrize(
    ("fault", "code", "subcode", "words"),
    [
        ("ig_daily_limit", 9, 2207042, "maximum number of posts"),
        ("ig_spam", 4, 2207051, "We restrict certain activity to protect our community"),
        ("ig_expired", -2, 2207020, "has expired. Please try to upload again."),
    ],
)
async def test_instagram_publish_faults_refuse(
    sim: RunningSimulator,
    http: aiohttp.ClientSession,
    fault: str,
    code: int,
    subcode: int,
    words: str,
) -> None:
    sim.state.set_script("pf", ["FINISHED"])
    body_in = {"fault": fault, "times": 1}
    assert (await admin(http, sim, "PUT", "/publish-faults/pf", body_in))[0] == 200
    status, body = await ig_publish(http, sim, "pf")
    assert (status, error_of(body)) == (400, (code, subcode))
    assert body["error"]["type"] == "OAuthException"
    assert words in body["error"]["error_user_msg"]
    assert sim.state.calls_for("pf").publishes == 0
    assert sim.state.requests[-1].answer == fault
    # Spent after one call.
    assert (await ig_publish(http, sim, "pf"))[0] == 200


async def test_ambiguous_publish_faults_publish_on_instagram(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_faults(slow_seconds=0.5)
    sim.state.set_script("amb*", ["FINISHED"])
    sim.state.set_publish_fault("amb1", "timeout_after_publish")
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.1):
            await ig_publish(http, sim, "amb1")
    assert sim.state.calls_for("amb1").publishes == 1
    assert (await ig_status(http, sim, "amb1"))[1]["status_code"] == "PUBLISHED"
    sim.state.set_publish_fault("amb2", "500_after_publish")
    status, body = await ig_publish(http, sim, "amb2")
    assert (status, error_of(body)) == (500, (1, None))
    assert (await ig_status(http, sim, "amb2"))[1]["status_code"] == "PUBLISHED"
    sim.state.set_publish_fault("amb3", "not_ready", times=1)
    assert error_of((await ig_publish(http, sim, "amb3"))[1]) == (24, 4279009)
    assert (await ig_publish(http, sim, "amb3"))[0] == 200
    assert sim.state.ig_quota_of(IG_USER)["published_24h"] == 3


async def test_a_carousel_of_eleven_is_refused_ten_is_published(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("car*", ["FINISHED"])
    eleven = [f"car11-{i}" for i in range(11)]
    status, _ = await admin(http, sim, "PUT", "/carousels/car11", {"children": eleven})
    assert status == 200
    status, body = await ig_publish(http, sim, "car11")
    assert (status, error_of(body)) == (400, (100, 2207028))
    assert "no more than 10" in body["error"]["error_user_msg"]
    assert sim.state.calls_for("car11").publishes == 0
    ten = [f"car10-{i}" for i in range(10)]
    assert (await admin(http, sim, "PUT", "/carousels/car10", {"children": ten}))[0] == 200
    assert (await ig_publish(http, sim, "car10"))[0] == 200
    # Threads keeps its own limit (20): eleven children publish there.
    params = {"creation_id": "car11", "access_token": TOKEN}
    async with http.post(f"{sim.base_url}/u1/threads_publish", params=params) as resp:
        assert resp.status == 200


# ----- throttling and usage headers --------------------------------------------------------


async def test_buc_throttle_answers_80002_with_the_usage_header(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_tokens(valid={TOKEN: IG_USER})
    sim.state.set_script("th1", ["FINISHED"])
    faults = {"rate": 1.0, "kinds": ["buc_throttle"]}
    assert (await admin(http, sim, "PUT", "/faults", faults))[0] == 200
    params = {"access_token": TOKEN, "fields": FIELDS}
    async with http.get(f"{sim.instagram_url}/th1", params=params) as resp:
        status, body = resp.status, await resp.json()
        header = resp.headers["X-Business-Use-Case-Usage"]
    assert (status, error_of(body)) == (400, (80002, None))
    assert body["error"]["message"] == (
        "There have been too many calls to this Instagram account. Wait a bit and try again."
    )
    assert (body["error"]["type"], body["error"]["is_transient"]) == ("OAuthException", True)
    assert json.loads(header) == {
        IG_USER: [
            {
                "type": "instagram",
                "call_count": 100,
                "total_cputime": 5,
                "total_time": 5,
                "estimated_time_to_regain_access": 1,
            }
        ]
    }
    assert (await admin(http, sim, "PUT", "/faults", {"rate": 0.0}))[0] == 200
    # A random fault spends no step; a scripted one and a publish fault work too.
    assert (await ig_status(http, sim, "th1"))[1]["status_code"] == "FINISHED"
    sim.state.set_script("th2", ["buc_throttle", "FINISHED"])
    assert error_of((await ig_status(http, sim, "th2"))[1])[0] == 80002
    sim.state.set_publish_fault("th2", "buc_throttle", times=1)
    params = {"creation_id": "th2", "access_token": TOKEN}
    async with http.post(f"{sim.instagram_url}/{IG_USER}/media_publish", params=params) as resp:
        assert error_of(await resp.json()) == (80002, None)
        assert IG_USER in json.loads(resp.headers["X-Business-Use-Case-Usage"])
    assert sim.state.calls_for("th2").publishes == 0


async def test_admin_usage_headers_are_sent_on_instagram_routes(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    usage = {IG_USER: [{"type": "instagram", "call_count": 42}]}
    put = {"X-Business-Use-Case-Usage": usage, "X-App-Usage": {"call_count": 7}}
    assert (await admin(http, sim, "PUT", "/usage-headers", put))[0] == 200
    sim.state.set_script("uh", ["FINISHED"])
    params = {"access_token": TOKEN, "fields": FIELDS}
    urls = [
        f"{sim.instagram_url}/uh",
        f"{sim.instagram_url}/{IG_USER}/content_publishing_limit",
    ]
    for url in urls:
        async with http.get(url, params=params) as resp:
            assert json.loads(resp.headers["X-Business-Use-Case-Usage"]) == usage
            assert json.loads(resp.headers["X-App-Usage"]) == {"call_count": 7}
    params = {"creation_id": "uh", "access_token": TOKEN}
    async with http.post(f"{sim.instagram_url}/{IG_USER}/media_publish", params=params) as resp:
        assert resp.status == 200
        assert json.loads(resp.headers["X-App-Usage"]) == {"call_count": 7}


# ----- token refresh -----------------------------------------------------------------------


async def test_ig_refresh_token(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    root = sim.instagram_url.removesuffix(INSTAGRAM_API_PREFIX)
    sim.state.set_tokens(valid={TOKEN: IG_USER})
    params = {"grant_type": "ig_refresh_token", "access_token": TOKEN}
    async with http.get(f"{root}/refresh_access_token", params=params) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", 5184000)
    # The new token works on Instagram's routes, for the same account.
    sim.state.set_script("rf", ["FINISHED"])
    assert (await ig_status(http, sim, "rf", token=body["access_token"]))[0] == 200
    assert sim.state.requests[-1].account == IG_USER
    # The same knobs as Threads': scripted faults, then expires_in.
    put = {"faults": ["500"], "expires_in": 3600}
    assert (await admin(http, sim, "PUT", "/refresh", put))[0] == 200
    async with http.get(f"{root}/refresh_access_token", params=params) as resp:
        assert resp.status == 500
    async with http.get(f"{root}/refresh_access_token", params=params) as resp:
        assert (await resp.json())["expires_in"] == 3600
    bad = {"grant_type": "fb_exchange_token", "access_token": TOKEN}
    async with http.get(f"{root}/refresh_access_token", params=bad) as resp:
        assert (resp.status, error_of(await resp.json())) == (400, (100, None))
    async with http.get(
        f"{root}/refresh_access_token", params={**params, "access_token": "nope"}
    ) as resp:
        assert error_of(await resp.json()) == (190, 467)
    refreshes = [r for r in sim.state.requests if r.kind == "refresh"]
    # An unknown grant type names no platform: it is recorded as Threads' (the default).
    platforms = ["instagram", "instagram", "instagram", "threads", "instagram"]
    assert [r.platform for r in refreshes] == platforms
    assert [r.answer for r in refreshes] == ["ok", "500", "ok", "bad_grant_type", "token_invalid"]
    assert sim.state.refresh_calls == 5


# ----- call accounting ---------------------------------------------------------------------


async def test_calls_and_requests_carry_the_platform(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    seen: list[StatusCall] = []
    sim.state.add_status_hook(seen.append)
    sim.state.set_script("c1", ["FINISHED"])
    await ig_status(http, sim, "c1")
    async with http.get(f"{sim.base_url}/c1", params={"access_token": TOKEN}) as resp:
        assert resp.status == 200
    await ig_quota(http, sim, None)
    await ig_publish(http, sim, "c1")
    assert [call.platform for call in seen] == ["instagram", "threads"]
    status, records = await admin(http, sim, "GET", "/requests")
    assert status == 200
    assert [(r["kind"], r["platform"]) for r in records] == [
        ("status", "instagram"),
        ("status", "threads"),
        ("quota", "instagram"),
        ("publish", "instagram"),
    ]
    status, calls = await admin(http, sim, "GET", "/calls")
    assert calls["by_platform"] == {"threads": 1, "instagram": 3}
    assert calls["containers"]["c1"]["platforms"] == ["instagram", "threads"]
    status, one = await admin(http, sim, "GET", "/calls/c1")
    assert (one["platforms"], one["publishes"]) == (["instagram", "threads"], 1)
    # An old-style positional StatusCall is a Threads one.
    assert StatusCall(1.0, "x", "a", "FINISHED", 0.0).platform == "threads"
