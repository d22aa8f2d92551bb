"""The Threads API simulator, exercised over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulator import RunningSimulator, SimulatorState, run_simulator
from tests.helpers.graph import get_status

REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/integration/ -> the repository
TOKEN = "tok-SECRET-abc123"
FIELDS = "status,error_message"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(port=0) as running:
        yield running


async def status_of(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    container_id: str,
    *,
    token: str | None = TOKEN,
    fields: str | None = FIELDS,
) -> tuple[int, Any]:
    return await get_status(http, sim.base_url, container_id, token=token, fields=fields)


async def statuses(
    http: aiohttp.ClientSession, sim: RunningSimulator, container_id: str, n: int
) -> list[str]:
    seen = []
    for _ in range(n):
        _, body = await status_of(http, sim, container_id)
        seen.append(body["status"])
    return seen


async def admin(
    http: aiohttp.ClientSession, sim: RunningSimulator, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, f"{sim.admin_url}{path}", json=body) as resp:
        return resp.status, await resp.json()


# ----- steps -------------------------------------------------------------------------------


# ----- status scripts ----------------------------------------------------------------------


async def test_script_progresses_and_last_step_repeats(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("1788", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    assert await statuses(http, sim, "1788", 5) == ["IN_PROGRESS"] * 2 + ["FINISHED"] * 3
    status, body = await status_of(http, sim, "1788")
    assert status == 200
    assert body == {"status": "FINISHED", "id": "1788"}


async def test_error_message_and_unknown_status_verbatim(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("e", ["ERROR:INVALID_ASPEC_RATIO"])
    sim.state.set_script("b", ["ERROR"])
    sim.state.set_script("n", ["STATUS:QUEUED_SOMEWHERE"])
    assert (await status_of(http, sim, "e"))[1] == {
        "status": "ERROR",
        "id": "e",
        "error_message": "INVALID_ASPEC_RATIO",
    }
    assert (await status_of(http, sim, "b"))[1] == {"status": "ERROR", "id": "b"}
    assert (await status_of(http, sim, "n"))[1] == {"status": "QUEUED_SOMEWHERE", "id": "n"}
    # Only requested fields come back, plus the id; the call still consumes a step.
    assert (await status_of(http, sim, "e", fields=None))[1] == {"id": "e"}
    assert (await status_of(http, sim, "e", fields="status"))[1] == {"status": "ERROR", "id": "e"}


async def test_prefix_rules_exact_rules_and_default(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("9*", ["EXPIRED"])
    sim.state.set_script("9001*", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("90015", ["PUBLISHED"])
    assert await statuses(http, sim, "90017", 2) == ["IN_PROGRESS", "FINISHED"]
    assert await statuses(http, sim, "9500", 1) == ["EXPIRED"]
    assert await statuses(http, sim, "90015", 1) == ["PUBLISHED"]
    status, body = await status_of(http, sim, "123")
    assert status == 400
    assert body["error"]["code"] == 100
    sim.state.set_default_script(["FINISHED"])
    assert await statuses(http, sim, "123", 1) == ["FINISHED"]


# ----- fault wire formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "http_status", "code", "subcode", "error_type", "transient"),
    [
        ("500", 500, 1, None, "THApiException", False),
        ("502", 502, 2, None, "THApiException", True),
        ("503", 503, 2, None, "THApiException", True),
        ("transient", 500, 2, None, "THApiException", True),
        ("throttle", 400, 4, None, "THApiException", True),
        ("throttle:17", 400, 17, None, "THApiException", True),
        ("throttle:32", 400, 32, None, "THApiException", True),
        ("throttle:341", 400, 341, None, "THApiException", True),
        ("throttle:613", 400, 613, None, "THApiException", True),
        ("429", 429, 4, None, "THApiException", True),
        ("notfound", 400, 100, 33, "GraphMethodException", False),
        ("nonexisting_field", 400, 100, None, "THApiException", False),
        ("permission", 403, 10, None, "THApiException", False),
        ("perm:250", 403, 250, None, "THApiException", False),
        ("token_expired", 400, 190, 463, "OAuthException", False),
        ("token_invalid", 400, 190, 467, "OAuthException", False),
    ],
)
async def test_graph_error_envelopes(
    sim: RunningSimulator,
    http: aiohttp.ClientSession,
    step: str,
    http_status: int,
    code: int,
    subcode: int | None,
    error_type: str,
    transient: bool,
) -> None:
    sim.state.set_script("c1", [step, "FINISHED"])
    status, body = await status_of(http, sim, "c1")
    assert status == http_status
    error = body["error"]
    assert set(body) == {"error"}
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert error["type"] == error_type
    assert error["is_transient"] is transient
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["fbtrace_id"], str)
    assert len(error["fbtrace_id"]) >= 10
    assert await statuses(http, sim, "c1", 1) == ["FINISHED"]


async def test_notfound_message_names_the_object(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    _, body = await status_of(http, sim, "424242")
    assert body["error"]["message"] == (
        "Unsupported get request. Object with ID '424242' does not exist, cannot be loaded due "
        "to missing permissions, or does not support this operation."
    )


async def test_nonexisting_field_reads_as_a_published_media_id(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    from api_client import ErrorKind, GraphAPIError, ThreadsClient, classify, explain_api_error

    sim.state.set_script("18030000000000002", ["nonexisting_field"])
    _, body = await status_of(http, sim, "18030000000000002")
    assert body["error"]["message"] == "Tried accessing nonexisting field (status)"
    client = ThreadsClient(http, base_url=sim.base_url)
    with pytest.raises(GraphAPIError) as info:
        await client.get_container_status("18030000000000002", token=TOKEN)
    assert classify(info.value) is ErrorKind.INVALID_REQUEST
    assert (explain_api_error(info.value) or "").startswith(
        "this id looks like a published media id, not a media container id: "
    )


@pytest.mark.parametrize(
    ("step", "http_status", "content_type", "parsed"),
    [
        ("html", 502, "text/html", None),
        ("garbage", 200, "application/json", None),
        ("badjson", 200, "application/json", {"status": 5}),
        ("badjson:array", 200, "application/json", [1, 2]),
        ("empty", 200, "application/json", {}),
    ],
)
async def test_raw_bodies(
    sim: RunningSimulator,
    http: aiohttp.ClientSession,
    step: str,
    http_status: int,
    content_type: str,
    parsed: Any,
) -> None:
    sim.state.set_script("r", [step])
    async with http.get(f"{sim.base_url}/r", params={"access_token": TOKEN}) as resp:
        assert resp.status == http_status
        assert resp.content_type == content_type
        raw = await resp.read()
    if parsed is None:
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
    else:
        assert json.loads(raw) == parsed


async def test_drop_closes_the_connection(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    # aiohttp's client resends an idempotent request once after a disconnect, so it takes two
    # drops in a row for the caller to see the error.
    sim.state.set_script("d", ["drop", "drop", "drop", "FINISHED"])
    with pytest.raises(aiohttp.ClientConnectionError):
        await status_of(http, sim, "d")
    assert [r.answer for r in sim.state.requests] == ["drop", "drop"]
    # The client's own retry turns a single drop into a normal answer.
    assert await statuses(http, sim, "d", 1) == ["FINISHED"]
    assert [r.answer for r in sim.state.requests][2:] == ["drop", "FINISHED"]


async def test_slow_steps(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_script("s", ["slow:0.2", "ERROR:UNKNOWN", "slow:0.2", "slow:0.2:FINISHED"])
    started = time.monotonic()
    # Nothing produced yet: a bare slow answers IN_PROGRESS.
    assert await statuses(http, sim, "s", 1) == ["IN_PROGRESS"]
    assert time.monotonic() - started >= 0.2
    assert await statuses(http, sim, "s", 1) == ["ERROR"]
    _, body = await status_of(http, sim, "s")
    assert body == {"status": "ERROR", "id": "s", "error_message": "UNKNOWN"}
    started = time.monotonic()
    assert await statuses(http, sim, "s", 1) == ["FINISHED"]
    assert time.monotonic() - started >= 0.2


async def test_random_faults_do_not_consume_steps(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    script = ["IN_PROGRESS", "IN_PROGRESS", "ERROR:FAILED_PROCESSING_VIDEO"]

    async def run(seed: int) -> list[str]:
        sim.state.reset()
        sim.state.set_script("rf", script)
        sim.state.set_faults(rate=0.5, kinds=["500", "throttle", "garbage"], seed=seed)
        for _ in range(30):
            async with http.get(f"{sim.base_url}/rf", params={"access_token": TOKEN}) as resp:
                await resp.read()
        return [record.answer for record in sim.state.requests]

    first = await run(3)
    assert first == await run(3)
    assert first != await run(4)
    assert {"500", "throttle", "garbage"} & set(first)
    scripted = [answer for answer in first if answer not in {"500", "throttle", "garbage"}]
    # With faults removed, the script plays exactly as written, last step repeated.
    assert scripted[:3] == ["IN_PROGRESS", "IN_PROGRESS", "ERROR:FAILED_PROCESSING_VIDEO"]
    assert set(scripted[3:]) <= {"ERROR:FAILED_PROCESSING_VIDEO"}


async def test_random_slow_answers_normally(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("rs", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.15, seed=1)
    started = time.monotonic()
    assert await statuses(http, sim, "rs", 2) == ["IN_PROGRESS", "FINISHED"]
    assert time.monotonic() - started >= 0.3


# ----- auth --------------------------------------------------------------------------------


async def test_auth_query_param_and_bearer_header(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_tokens(valid={TOKEN: "user-a", "other-token": "user-b"})
    sim.state.set_script("a", ["FINISHED"])
    assert (await status_of(http, sim, "a"))[0] == 200
    headers = {"Authorization": "Bearer other-token"}
    async with http.get(f"{sim.base_url}/a", params={"fields": "status"}, headers=headers) as r:
        assert r.status == 200
        assert await r.json() == {"status": "FINISHED", "id": "a"}
    assert sim.state.calls_for("a").accounts == ["user-a", "user-b"]


async def test_any_token_accepted_when_none_configured(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("a", ["FINISHED"])
    assert (await status_of(http, sim, "a", token="whatever"))[0] == 200
    assert sim.state.calls_for("a").accounts == ["default"]


async def test_missing_unknown_and_expired_tokens(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_tokens(valid={TOKEN: "user-a"}, expired={"old-token": "user-old"})
    sim.state.set_script("a", ["FINISHED"])
    status, body = await status_of(http, sim, "a", token=None)
    assert (status, body["error"]["code"], body["error"].get("error_subcode")) == (400, 190, None)
    assert body["error"]["message"].startswith("An active access token must be used")
    status, body = await status_of(http, sim, "a", token="wrong")
    assert (status, body["error"]["code"], body["error"]["error_subcode"]) == (400, 190, 467)
    assert body["error"]["type"] == "OAuthException"
    status, body = await status_of(http, sim, "a", token="old-token")
    assert (status, body["error"]["code"], body["error"]["error_subcode"]) == (400, 190, 463)
    # Rejected calls are logged but do not consume the script.
    assert sim.state.calls_for("a").accounts == ["", "", "user-old"]
    assert await statuses(http, sim, "a", 1) == ["FINISHED"]


async def test_token_never_echoed(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_tokens(valid={TOKEN: "user-a"}, expired={"old-SECRET": "user-old"})
    sim.state.set_script("t", ["FINISHED", "notfound"])
    sim.state.set_script("t2", ["FINISHED"])
    seen: list[str] = []
    for token in [TOKEN, TOKEN, "bad-SECRET", "old-SECRET"]:
        async with http.get(
            f"{sim.base_url}/t", params={"access_token": token, "fields": FIELDS}
        ) as resp:
            seen.append(await resp.text() + str(resp.headers))
    async with http.post(
        f"{sim.base_url}/user-a/threads_publish",
        params={"creation_id": "t2"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        seen.append(await resp.text())
    async with http.get(
        f"{sim.base_url}/me/threads_publishing_limit", params={"access_token": TOKEN}
    ) as resp:
        seen.append(await resp.text())
    for path in ["/calls", "/calls/t", "/requests", "/scripts", "/faults"]:
        async with http.get(f"{sim.admin_url}{path}") as resp:
            seen.append(await resp.text())
    async with http.put(f"{sim.admin_url}/tokens", json={"valid": {TOKEN: "u"}}) as resp:
        seen.append(await resp.text())
    seen.append(repr(sim.state.requests))
    assert all("SECRET" not in text for text in seen)


# ----- quota -------------------------------------------------------------------------------


async def quota(
    http: aiohttp.ClientSession, sim: RunningSimulator, user: str, fields: str | None
) -> Any:
    params = {"access_token": TOKEN}
    if fields is not None:
        params["fields"] = fields
    async with http.get(f"{sim.base_url}/{user}/threads_publishing_limit", params=params) as r:
        assert r.status == 200
        return await r.json()


async def test_quota_field_selection(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_quota("42", quota_usage=7, reply_quota_usage=3)
    assert await quota(http, sim, "42", None) == {"data": [{"quota_usage": 7}]}
    assert await quota(http, sim, "42", "quota_usage,config") == {
        "data": [{"quota_usage": 7, "config": {"quota_total": 250, "quota_duration": 86400}}]
    }
    everything = (
        "quota_usage,config,reply_quota_usage,reply_config,delete_quota_usage,delete_config,"
        "location_search_quota_usage,location_search_config"
    )
    assert await quota(http, sim, "42", everything) == {
        "data": [
            {
                "quota_usage": 7,
                "config": {"quota_total": 250, "quota_duration": 86400},
                "reply_quota_usage": 3,
                "reply_config": {"quota_total": 1000, "quota_duration": 86400},
                "delete_quota_usage": 0,
                "delete_config": {"quota_total": 100, "quota_duration": 86400},
                "location_search_quota_usage": 0,
                "location_search_config": {"quota_total": 500, "quota_duration": 86400},
            }
        ]
    }
    assert sim.state.quota_calls == 3


# ----- publish -----------------------------------------------------------------------------


async def publish(
    http: aiohttp.ClientSession, sim: RunningSimulator, container_id: str, user: str = "u1"
) -> tuple[int, Any]:
    params = {"creation_id": container_id, "access_token": TOKEN}
    async with http.post(f"{sim.base_url}/{user}/threads_publish", params=params) as resp:
        return resp.status, await resp.json()


async def test_publish_not_ready_then_success_then_published(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("p", ["IN_PROGRESS", "FINISHED"])
    status, body = await publish(http, sim, "p")
    assert status == 400
    assert (body["error"]["code"], body["error"]["error_subcode"]) == (24, 4279009)
    assert body["error"]["error_user_title"] == "Media Not Found"
    assert await statuses(http, sim, "p", 2) == ["IN_PROGRESS", "FINISHED"]
    status, body = await publish(http, sim, "p")
    assert status == 200
    assert set(body) == {"id"}
    assert body["id"].isdigit()
    assert await statuses(http, sim, "p", 2) == ["PUBLISHED", "PUBLISHED"]
    # Publishing twice is refused: the container is no longer FINISHED.
    assert (await publish(http, sim, "p"))[0] == 400
    calls = sim.state.calls_for("p")
    assert (calls.publish_calls, calls.publishes) == (3, 1)
    assert sim.state.quota_of("u1")["quota_usage"] == 1


async def test_publish_peeks_an_unpolled_container(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    sim.state.set_script("fresh", ["FINISHED"])
    sim.state.set_script("busy", ["IN_PROGRESS", "FINISHED"])
    assert (await publish(http, sim, "fresh"))[0] == 200
    assert (await publish(http, sim, "busy"))[0] == 400
    # Peeking consumed nothing.
    assert await statuses(http, sim, "busy", 1) == ["IN_PROGRESS"]


async def test_publish_quota_exhausted(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_script("q", ["FINISHED"])
    sim.state.set_quota("u1", quota_usage=250)
    status, body = await publish(http, sim, "q")
    assert status == 400
    assert (body["error"]["code"], body["error"]["error_subcode"]) == (4, 2207042)
    assert "maximum number of published posts" in body["error"]["message"]
    assert sim.state.calls_for("q").publishes == 0


async def test_publish_faults(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_faults(slow_seconds=0.5)
    sim.state.set_script("slowpub*", ["FINISHED"])
    sim.state.set_publish_fault("slowpub1", "timeout_after_publish")
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.1):
            await publish(http, sim, "slowpub1")
    assert sim.state.calls_for("slowpub1").publishes == 1
    assert await statuses(http, sim, "slowpub1", 1) == ["PUBLISHED"]

    sim.state.set_publish_fault("slowpub2", "500_after_publish")
    status, body = await publish(http, sim, "slowpub2")
    assert (status, body["error"]["code"]) == (500, 1)
    assert sim.state.calls_for("slowpub2").publishes == 1

    sim.state.set_publish_fault("slowpub3", "500", times=1)
    assert (await publish(http, sim, "slowpub3"))[0] == 500
    assert sim.state.calls_for("slowpub3").publishes == 0
    assert (await publish(http, sim, "slowpub3"))[0] == 200
    assert sim.state.calls_for("slowpub3").publish_calls == 2


async def test_usage_headers(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_script("h", ["FINISHED"])
    async with http.get(f"{sim.base_url}/h", params={"access_token": TOKEN}) as resp:
        assert "X-App-Usage" not in resp.headers
        assert "X-Business-Use-Case-Usage" not in resp.headers
    usage = {"call_count": 50, "total_cputime": 10, "total_time": 12}
    assert (await admin(http, sim, "PUT", "/usage-headers", {"X-App-Usage": usage}))[0] == 200
    async with http.get(f"{sim.base_url}/h", params={"access_token": TOKEN}) as resp:
        assert json.loads(resp.headers["X-App-Usage"]) == usage
        assert "X-Business-Use-Case-Usage" not in resp.headers


# ----- call log and admin ------------------------------------------------------------------


async def test_call_log(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.set_script("L", ["IN_PROGRESS", "500", "FINISHED"])
    before = time.time()
    await statuses(http, sim, "L", 1)
    await status_of(http, sim, "L")
    await statuses(http, sim, "L", 1)
    await publish(http, sim, "L")
    await quota(http, sim, "u1", None)
    _, calls = await admin(http, sim, "GET", "/calls")
    assert calls["total"] == 5
    assert calls["quota_calls"] == 1
    entry = calls["containers"]["L"]
    assert entry["count"] == 3
    assert entry["accounts"] == ["default"] * 3
    assert (entry["publish_calls"], entry["publishes"]) == (1, 1)
    assert all(before <= t <= time.time() for t in entry["times"])
    assert (await admin(http, sim, "GET", "/calls/L"))[1] == entry
    assert (await admin(http, sim, "GET", "/calls/never"))[1] == {
        "count": 0,
        "times": [],
        "accounts": [],
        "publish_calls": 0,
        "publishes": 0,
        "early_parent_calls": 0,
        "lost_reply_to": 0,
    }
    _, records = await admin(http, sim, "GET", "/requests")
    assert [(r["kind"], r["id"], r["answer"]) for r in records] == [
        ("status", "L", "IN_PROGRESS"),
        ("status", "L", "500"),
        ("status", "L", "FINISHED"),
        ("publish", "L", "published"),
        ("quota", "u1", "ok"),
    ]
    assert all(r["account"] == "default" for r in records)
    times = [r["t"] for r in records]
    assert times == sorted(times)


async def test_admin_endpoints(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    steps = {"steps": ["IN_PROGRESS", "FINISHED"]}
    assert (await admin(http, sim, "PUT", "/scripts/77*", steps))[0] == 200
    assert (await admin(http, sim, "PUT", "/default-script", {"steps": ["EXPIRED"]}))[0] == 200
    assert await statuses(http, sim, "771", 2) == ["IN_PROGRESS", "FINISHED"]
    assert await statuses(http, sim, "5", 1) == ["EXPIRED"]
    _, scripts = await admin(http, sim, "GET", "/scripts")
    assert scripts == {"rules": {"77*": ["IN_PROGRESS", "FINISHED"]}, "default": ["EXPIRED"]}

    status, faults = await admin(
        http, sim, "PUT", "/faults", {"rate": 0.2, "kinds": ["500"], "slow_seconds": 1, "seed": 1}
    )
    assert (status, faults) == (200, {"rate": 0.2, "kinds": ["500"], "slow_seconds": 1.0})
    assert (await admin(http, sim, "PUT", "/faults", {"rate": 0}))[0] == 200

    status, usage = await admin(http, sim, "PUT", "/quota/u9", {"quota_usage": 249})
    assert status == 200
    assert usage["quota_usage"] == 249
    assert await quota(http, sim, "u9", None) == {"data": [{"quota_usage": 249}]}

    assert (await admin(http, sim, "PUT", "/publish-faults/771", {"fault": "500"}))[0] == 200
    assert (await publish(http, sim, "771", "u9"))[0] == 500
    assert (await admin(http, sim, "PUT", "/publish-faults/771", {"fault": None}))[0] == 200
    assert (await publish(http, sim, "771", "u9"))[0] == 200
    status, body = await publish(http, sim, "772", "u9")  # u9 is now at 250
    assert body["error"]["error_subcode"] == 2207042

    tokens = {"valid": {"t-1": "acct-1"}, "expired": {"t-0": "acct-0"}}
    assert (await admin(http, sim, "PUT", "/tokens", tokens))[0] == 200
    assert (await status_of(http, sim, "771", token="t-0"))[1]["error"]["error_subcode"] == 463
    assert (await status_of(http, sim, "771", token="t-1"))[0] == 200
    assert (await admin(http, sim, "PUT", "/tokens", {}))[0] == 200  # any token again

    for path, bad in [
        ("/scripts/x", {"steps": ["NOPE"]}),
        ("/scripts/x", {"steps": []}),
        ("/faults", {"rate": 2}),
        ("/faults", {"kinds": ["FINISHED"]}),
        ("/quota/u9", {"bogus_usage": 1}),
        ("/publish-faults/x", {"fault": "explode"}),
        ("/usage-headers", {"X-Other": {}}),
        ("/tokens", {"valid": ["t"]}),
    ]:
        status, body = await admin(http, sim, "PUT", path, bad)
        assert status == 400, path
        assert "error" in body

    assert (await admin(http, sim, "POST", "/reset"))[0] == 200
    _, calls = await admin(http, sim, "GET", "/calls")
    assert (calls["total"], calls["containers"]) == (0, {})
    assert await statuses(http, sim, "771", 1) == ["IN_PROGRESS"]  # cursor restarted

    assert (await admin(http, sim, "POST", "/reset", {"rules": True}))[0] == 200
    assert (await admin(http, sim, "GET", "/scripts"))[1] == {"rules": {}, "default": ["notfound"]}


async def test_state_passed_in_is_used() -> None:
    state = SimulatorState(scripts={"x": ["FINISHED"]}, tokens={"k": "acct"})
    async with run_simulator(port=0, state=state) as running, aiohttp.ClientSession() as http:
        assert running.state is state
        assert running.base_url == f"http://127.0.0.1:{running.port}/v1.0"
        assert running.admin_url == f"http://127.0.0.1:{running.port}/_sim"
        assert (await status_of(http, running, "x", token="k"))[1]["status"] == "FINISHED"


# ----- CLI ---------------------------------------------------------------------------------


async def test_cli_subprocess_serves_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator",
        "--port",
        "0",
        "--script",
        "1=FINISHED",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        prefix = "simulator listening on "
        assert line.startswith(prefix), line
        base_url = line[len(prefix) :].strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1.0")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base_url}/1", params={"fields": "status", "access_token": "x"}) as resp,
        ):
            assert await resp.json() == {"status": "FINISHED", "id": "1"}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
