"""Issue 13: the HTTP API against a real Redis, the simulator and a real worker. Every JSON
answer is validated against /v1/openapi.json (tests/web_helpers.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.settings import TEST_TOKEN
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.web_helpers import RO_KEY, RW_KEY, Api, events, running_api
from worker import PollerClient
from worker.ops import stats
from worker.store.keys import Keys
from worker.web.routes import ROUTES


def long_window(settings: Settings, seconds: float = 30.0) -> Settings:
    return settings.model_copy(update={"poll_max_seconds": seconds})


async def test_enqueue_then_long_poll_until_final(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    sim.state.set_script("13001", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    async with running_api(settings) as api:
        got = await api.post("/v1/containers", json={"container_id": "13001", "account": "42"})
        assert got.status == 202
        assert got.body["outcomes"] == [
            {
                "container_id": "13001",
                "outcome": "enqueued",
                "status": "QUEUED",
                "url": "/v1/containers/13001",
            }
        ]
        assert got.headers["Location"] == "/v1/containers/13001"
        queued = await api.get("/v1/containers/13001")
        assert queued.status == 202 and queued.body["status"] == "QUEUED"
        assert int(queued.headers["Retry-After"]) >= 1
        async with running_worker(settings):
            t0 = time.monotonic()
            final = await api.get("/v1/containers/13001?wait=20")
            waited = time.monotonic() - t0
        assert final.status == 200 and final.body["status"] == "FINISHED" and final.body["final"]
        assert final.body["checks"] == 3 and final.body["account"] == "42"
        assert waited < 5  # woken by the final state, not by the wait running out
        t0 = time.monotonic()
        again = await api.get("/v1/containers/13001?wait=20")
        assert again.status == 200 and time.monotonic() - t0 < 1
        unknown = await api.get("/v1/containers/13009?wait=0.2")
        assert unknown.status == 404 and unknown.code() == "container_not_found"


async def test_a_long_poll_that_runs_out_answers_202(redis: Redis, settings: Settings) -> None:
    async with running_api(settings) as api:
        await api.post("/v1/containers", json={"container_id": "13011"})
        t0 = time.monotonic()
        got = await api.get("/v1/containers/13011?wait=0.5")
        assert 0.5 <= time.monotonic() - t0 < 3
        assert got.status == 202 and got.body["status"] == "QUEUED"


async def test_a_batch_has_the_rules_of_enqueue(redis: Redis, settings: Settings) -> None:
    async with running_api(settings) as api:
        got = await api.post(
            "/v1/containers",
            json={"container_ids": ["13021", "13022", "13021"], "window_seconds": 5},
        )
        assert got.status == 202 and "Location" not in got.headers
        assert [(o["container_id"], o["outcome"]) for o in got.body["outcomes"]] == [
            ("13021", "enqueued"),
            ("13022", "enqueued"),
        ]
        again = await api.post("/v1/containers", json={"container_ids": ["13022", "13023"]})
        assert [o["outcome"] for o in again.body["outcomes"]] == ["duplicate", "enqueued"]
        r = await PollerClient.from_settings(settings, redis).get("13021")
        assert r is not None and r.deadline_at is not None and r.enqueued_at is not None
        assert r.deadline_at - r.enqueued_at == pytest.approx(5, abs=0.01)


async def test_a_refused_enqueue_names_no_location_where_nothing_exists(
    redis: Redis, settings: Settings
) -> None:
    """Schemathesis (ST302): a refused carousel pointed Location at a container that does not
    exist. Location names the poll a request started or found, never nothing."""
    async with running_api(settings) as api:
        first = await api.post(
            "/v1/containers", json={"container_id": "13031", "children": ["13032", "13033"]}
        )
        assert first.status == 202 and first.headers["Location"] == "/v1/containers/13031"
        # 13032 belongs to the live carousel 13031: a second carousel may not take it.
        other = await api.post(
            "/v1/containers", json={"container_id": "13034", "children": ["13032", "13035"]}
        )
        assert [o["outcome"] for o in other.body["outcomes"]] == ["refused"]
        assert "Location" not in other.headers
        assert (await api.get("/v1/containers/13034")).status == 404


async def test_bad_input_is_refused_with_a_stable_code_and_writes_nothing(
    redis: Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"api_max_body_bytes": 2048, "api_max_batch": 5})
    # No sampler: it writes the in-flight count of the minute (worker.ops.stats).
    async with running_api(settings, sample=False) as api:
        before = await redis.dbsize()
        json_type = {"Content-Type": "application/json"}
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            (
                "POST",
                "/v1/containers",
                {"data": b"{nope", "headers": json_type},
                400,
                "malformed_json",
            ),
            (
                "POST",
                "/v1/containers",
                {"data": b"\xff\xfe", "headers": json_type},
                400,
                "malformed_json",
            ),
            (
                "POST",
                "/v1/containers",
                {"data": b"[" * 1500, "headers": json_type},
                400,
                "malformed_json",
            ),
            (
                "POST",
                "/v1/containers",
                {"data": b'{"container_id": NaN}', "headers": json_type},
                400,
                "malformed_json",
            ),
            ("POST", "/v1/containers", {"data": b"container_id=1"}, 415, "unsupported_media_type"),
            ("POST", "/v1/containers", {"data": b"", "headers": json_type}, 422, "invalid_body"),
            ("POST", "/v1/containers", {"json": [1]}, 422, "invalid_body"),
            ("POST", "/v1/containers", {"json": {"id": "1"}}, 422, "unknown_field"),
            ("POST", "/v1/containers", {"json": {"container_id": "1x"}}, 422, "invalid_id"),
            ("POST", "/v1/containers", {"json": {"container_ids": ["1", "2x"]}}, 422, "invalid_id"),
            ("POST", "/v1/containers", {"json": {"container_ids": []}}, 422, "empty_batch"),
            (
                "POST",
                "/v1/containers",
                {"json": {"container_ids": [str(i) for i in range(6)]}},
                422,
                "batch_too_large",
            ),
            (
                "POST",
                "/v1/containers",
                {"json": {"container_id": "1", "window_seconds": 1e9}},
                422,
                "invalid_window",
            ),
            (
                "POST",
                "/v1/containers",
                {"json": {"container_id": "1", "webhook_url": "file:///etc"}},
                422,
                "invalid_id",
            ),
            (
                "POST",
                "/v1/containers",
                {"json": {"container_ids": ["1" * 20] * 120}},
                413,
                "body_too_large",
            ),
            (
                "POST",
                "/v1/containers/1/cancel",
                {"json": {"reason": "x" * 300}},
                422,
                "invalid_body",
            ),
            ("POST", "/v1/containers/1/cancel", {"json": {"why": 1}}, 422, "unknown_field"),
            # The document says boolean / string / integer / number: null and empty are refused.
            (
                "POST",
                "/v1/containers",
                {"json": {"container_id": "1", "publish": None}},
                422,
                "invalid_body",
            ),
            ("POST", "/v1/containers/1/cancel", {"json": {"reason": None}}, 422, "invalid_body"),
            ("GET", "/v1/finals?limit=", {}, 400, "invalid_parameter"),
            ("GET", "/v1/failures?since=", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/1?wait=", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/1?wait=61", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/12a", {}, 422, "invalid_id"),
            ("GET", "/v1/containers/" + "1" * 40, {}, 422, "invalid_id"),
            ("GET", "/v1/containers/1?wait=soon", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/1?wait=9999", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/1?wait=-1", {}, 400, "invalid_parameter"),
            ("GET", "/v1/failures?since=1y", {}, 400, "invalid_parameter"),
            ("GET", "/v1/failures?since=0m", {}, 400, "invalid_parameter"),
            ("GET", "/v1/finals?limit=0", {}, 400, "invalid_parameter"),
            ("GET", "/v1/finals?cursor=yesterday", {}, 400, "invalid_parameter"),
            ("GET", "/v1/inflight?cursor=x", {}, 400, "invalid_parameter"),
            ("GET", "/v1/accounts?cursor=-3", {}, 400, "invalid_parameter"),
            ("GET", "/v1/accounts?limit=9999", {}, 400, "invalid_parameter"),
            ("GET", "/v1/dead-letters/spam", {}, 404, "not_found"),
            ("POST", "/v1/dead-letters/intake/yesterday/replay", {}, 422, "invalid_id"),
            ("DELETE", "/v1/dead-letters/webhooks/1-x", {}, 422, "invalid_id"),
            (
                "GET",
                "/v1/events",
                {"headers": {"Last-Event-ID": "later"}},
                400,
                "invalid_parameter",
            ),
            # Found by Schemathesis (tests/integration/test_schemathesis.py):
            # JSON null is a body, and not the object the document asks for;
            (
                "POST",
                "/v1/containers/1/cancel",
                {"data": b"null", "headers": json_type},
                422,
                "invalid_body",
            ),
            # the pattern of a query's Last-Event-ID holds when the header is there too;
            (
                "GET",
                "/v1/events?last_event_id=",
                {"headers": {"Last-Event-ID": "0"}},
                400,
                "invalid_parameter",
            ),
            # a stream id part of 20 digits may be over 2**64 (Redis refused it: 503);
            (
                "POST",
                "/v1/dead-letters/intake/97043075029270520001-77992/replay",
                {},
                422,
                "invalid_id",
            ),
            ("GET", "/v1/finals?cursor=" + "9" * 20 + "-0", {}, 400, "invalid_parameter"),
            # a cursor has the pattern of its list's own next_cursor.
            ("GET", "/v1/inflight?cursor=1-0", {}, 400, "invalid_parameter"),
            ("GET", "/v1/accounts?cursor=1-0", {}, 400, "invalid_parameter"),
            ("GET", "/v1/dead-letters/intake?cursor=%201-0", {}, 400, "invalid_parameter"),
            # ?wait= is a number as JSON writes one (float() also reads "1_0", " 1", "+1").
            ("GET", "/v1/containers/1?wait=1_0", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/1?wait=%201", {}, 400, "invalid_parameter"),
            ("GET", "/v1/containers/1?wait=+1", {}, 400, "invalid_parameter"),
            ("GET", "/v1/nothing-here", {}, 404, "not_found"),
            ("PUT", "/v1/containers", {"json": {}}, 405, "method_not_allowed"),
            ("DELETE", "/v1/containers/1", {}, 405, "method_not_allowed"),
        ]
        for method, path, kw, status, code in cases:
            got = await api.call(method, path, **kw)
            assert (got.status, got.code()) == (status, code), (method, path, got.text[:300])
            assert got.body["error"]["status"] == status and got.body["error"]["message"]
            assert got.body["request_id"] == got.headers["X-Request-Id"], (method, path)
        allow = await api.call("PUT", "/v1/containers", json={})
        assert "POST" in allow.headers.get("Allow", "")
        assert await redis.dbsize() == before


async def test_the_served_document_is_what_the_server_accepts(
    redis: Redis, settings: Settings
) -> None:
    """?wait='s bound is this server's API_MAX_WAIT_SECONDS; values the document's patterns
    allow (whitespace around an id, a unit in capitals) are taken, not refused."""
    settings = settings.model_copy(update={"api_max_wait_seconds": 2.0, "api_max_batch": 3})
    async with running_api(settings, sample=False) as api:
        before = await redis.dbsize()
        doc = (await api.get("/v1/openapi.json")).body
        op = doc["paths"]["/v1/containers/{container_id}"]["get"]
        wait = next(p for p in op["parameters"] if p["name"] == "wait")["schema"]
        assert wait["maximum"] == 2.0
        enqueue = doc["components"]["schemas"]["EnqueueRequest"]["properties"]
        assert enqueue["container_ids"]["maxItems"] == 3
        at_bound = await api.get("/v1/containers/77001?wait=2")
        assert at_bound.code() == "container_not_found"
        over = await api.get("/v1/containers/77001?wait=2.5")
        assert over.status == 400 and "between 0 and 2 seconds" in over.body["error"]["message"]
        spaced = await api.get("/v1/containers/%2077001%20")
        assert spaced.status == 404 and spaced.code() == "container_not_found"
        assert (await api.get("/v1/failures?since=1H30M")).status == 200
        # Found by Schemathesis: a duration the pattern allows beyond 7 days (no pattern can
        # bound it) counts as 7 days, as the document says; it was a 400.
        for query in ("since=73d573121m819100s", "until=8d", "since=999999d&until=30d"):
            far = await api.get(f"/v1/failures?{query}")
            assert far.status == 200, (query, far.body)
        gone = await api.call("DELETE", "/v1/dead-letters/intake/%201-0%20")
        assert gone.status == 404 and gone.code() == "dead_letter_not_found"
        # Found by Schemathesis: cursor 0-0 is valid by the pattern, and nothing comes before
        # it (Redis refuses "(0-0" as the top of a range: this was a 503).
        for path in ("/v1/finals", "/v1/failures", "/v1/dead-letters/intake"):
            empty = await api.get(f"{path}?cursor=0-0")
            assert empty.status == 200, (path, empty.text)
            assert empty.body["items"] == [] and empty.body["next_cursor"] is None
        assert (await api.get("/v1/containers/77001?wait=1e0")).code() == "container_not_found"
        assert await redis.dbsize() == before


async def test_every_route_refuses_a_request_without_a_valid_key(
    redis: Redis, settings: Settings
) -> None:
    async with running_api(settings) as api:
        for route in ROUTES:
            path = (
                route.path.replace("{container_id}", "1")
                .replace("{kind}", "intake")
                .replace("{letter_id}", "1-0")
                .replace("{name}", "console.css")
            )
            if route.auth == "none":
                got = await api.call(route.method, path, key=None, check=False)
                assert got.status < 500, (route, got.status)  # POST /login: 401, no key given
                continue
            for key in (None, "not-a-key-of-this-server-000", f"{RW_KEY}x"):
                got = await api.call(route.method, path, key=key)
                assert got.status == 401, (route.path, key, got.status)
                assert got.code() == "unauthorized"
                assert got.headers["WWW-Authenticate"].startswith("Bearer")
            bad_scheme = await api.call(
                route.method, path, key=None, headers={"Authorization": f"Basic {RW_KEY}"}
            )
            assert bad_scheme.status == 401
            if route.name == "events":
                async with events(api, key=RO_KEY):
                    pass  # a read key opens the stream (200)
                continue
            read = await api.call(route.method, path, key=RO_KEY, check=False)
            if route.auth == "write":
                assert read.status == 403 and read.code() == "forbidden", route.path
            else:
                assert read.status not in (401, 403), (route.path, read.status)
        # A browser without a session is sent to the login page, not shown JSON.
        page = await api.call("GET", "/", key=None, headers={"Accept": "text/html"})
        assert page.status == 303 and page.headers["Location"] == "/login"


async def test_no_key_configured_means_open_on_loopback(redis: Redis, settings: Settings) -> None:
    async with running_api(settings, write=(), read=()) as api:
        got = await api.post(
            "/v1/containers",
            key=None,
            json={"container_id": "13031"},
            headers={"Origin": api.base},
        )
        assert got.status == 202
        login = await api.call("GET", "/login", key=None, check=False)
        assert login.status == 303 and login.headers["Location"] == "/"


async def test_events_stream_and_resume(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    ids = [f"1304{i}" for i in range(1, 6)]
    for cid in ids:
        sim.state.set_script(cid, ["FINISHED"])
    async with running_api(settings) as api, running_worker(settings):
        async with events(api) as stream:
            assert stream.retry is None
            await api.post("/v1/containers", json={"container_ids": ids[:3]})
            got = [await stream.next() for _ in range(3)]
            assert stream.retry == 2000
        assert {e.event for e in got} == {"final"}
        first = [json.loads(e.data) for e in got]
        assert sorted(d["container_id"] for d in first) == ids[:3]
        assert all(
            d["status"] == "FINISHED" and d["id"] == e.id for d, e in zip(first, got, strict=True)
        )
        # Disconnected: two more become final; resuming after the second event gets the rest.
        await api.post("/v1/containers", json={"container_ids": ids[3:]})
        await wait_until(lambda: _xlen(redis, keys, 5), timeout=10)
        async with events(api, last_event_id=got[1].id) as stream:
            rest = [await stream.next() for _ in range(3)]
            with pytest.raises(TimeoutError):
                await stream.next(timeout=1.5)  # nothing twice, nothing more
        assert rest[0].id == got[2].id
        assert sorted(json.loads(e.data)["container_id"] for e in rest) == sorted(
            [first[2]["container_id"], *ids[3:]]
        )
        assert len({e.id for e in [*got, *rest]}) == 5
        # From the start, and after a trim: a gap is announced first.
        async with events(api, last_event_id="0") as stream:
            assert len([await stream.next() for _ in range(5)]) == 5
        await redis.xtrim(keys.events, maxlen=1, approximate=False)
        async with events(api, last_event_id=got[0].id) as stream:
            gap = await stream.next()
            assert gap.event == "gap" and json.loads(gap.data)["after"] == got[0].id
            last = await stream.next()
            assert last.event == "final" and last.id == rest[-1].id


async def _xlen(redis: Redis, keys: Keys, n: int) -> bool:
    return int(await redis.xlen(keys.events)) >= n


async def test_cancel_stops_polling_with_one_event(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = long_window(settings)
    sim.state.set_script("13051", ["IN_PROGRESS"])
    client = PollerClient.from_settings(settings, redis)
    async with running_api(settings) as api, running_worker(settings):
        await api.post("/v1/containers", json={"container_id": "13051"})
        await wait_until(lambda: sim.state.calls_for("13051").count >= 2, timeout=10)
        got = await api.post("/v1/containers/13051/cancel", json={"reason": "wrong video"})
        assert got.status == 200 and got.body["outcome"] == "cancelled"
        result = got.body["result"]
        assert (result["status"], result["final"]) == ("CANCELLED", True)
        assert result["last_error"] == "cancelled: wrong video" and result["next_check_at"] is None
        calls = sim.state.calls_for("13051").count
        await asyncio.sleep(1.5)  # seven intervals: no check runs any more
        assert sim.state.calls_for("13051").count <= calls + 1  # one may have been in flight
        after = await client.get("13051")
        assert after is not None and after.status == "CANCELLED" and after.final
        again = await api.post("/v1/containers/13051/cancel")
        assert again.status == 409 and again.code() == "already_final"
        assert again.body["error"]["details"] == {"status": "CANCELLED"}
        assert (await api.post("/v1/containers/13059/cancel")).code() == "container_not_found"
        status = await api.get("/v1/containers/13051")
        assert status.status == 200 and status.body["status"] == "CANCELLED"
    entries = await redis.xrange(keys.events)
    mine = [f for _, f in entries if f[b"container_id"] == b"13051"]
    assert len(mine) == 1 and mine[0][b"status"] == b"CANCELLED"
    assert mine[0][b"last_error"] == b"cancelled: wrong video"
    assert await redis.zscore(keys.inflight, "13051") is None
    assert not [j for j in await redis.zrange(keys.queue, 0, -1) if b"13051" in j]


async def test_reads_inflight_accounts_workers_failures(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    async with running_api(settings) as api:
        # In flight, by deadline, page by page (no worker yet: they stay queued).
        for i, window in enumerate([9, 5, 7, 6, 8]):
            await api.post(
                "/v1/containers", json={"container_id": f"1306{i}", "window_seconds": window}
            )
        seen: list[str] = []
        cursor = ""
        for _ in range(5):
            page = await api.get(f"/v1/inflight?limit=2{'&cursor=' + cursor if cursor else ''}")
            assert page.body["total"] == 5
            seen += [p["container_id"] for p in page.body["items"]]
            cursor = page.body["next_cursor"] or ""
            if not cursor:
                break
        assert seen == ["13061", "13063", "13062", "13064", "13060"]
        await api.call("POST", "/v1/containers/13060/cancel")
        await api.call("POST", "/v1/containers/13061/cancel")
        await api.call("POST", "/v1/containers/13062/cancel")
        await api.call("POST", "/v1/containers/13063/cancel")
        await api.call("POST", "/v1/containers/13064/cancel")

        sim.state.set_script("13071", ["throttle", "FINISHED"])
        sim.state.set_script("13072", ["ERROR:FAILED_DOWNLOADING_VIDEO"])
        sim.state.set_script("13073", ["FINISHED"])
        async with running_worker(settings) as worker:
            await api.post("/v1/containers", json={"container_id": "13071", "account": "777"})
            await api.post("/v1/containers", json={"container_ids": ["13072", "13073"]})
            client = PollerClient.from_settings(settings, redis)
            await wait_until(lambda: _throttled(api, "777"), timeout=10)
            for cid in ("13071", "13072", "13073"):
                r = await client.wait(cid, timeout=15)
                assert r is not None and r.final
            workers = await api.get("/v1/workers")
            (w,) = workers.body["items"]
            assert worker.runner is not None and w["name"] == worker.runner.name
            assert w["accepting"] and w["slots"] == min(
                settings.worker_max_jobs, settings.api_max_concurrency
            )
        failures = await api.get("/v1/failures?since=1h")
        by_id = {f["container_id"]: f for f in failures.body["items"]}
        assert "13073" not in by_id and "13071" not in by_id
        err = by_id["13072"]
        assert err["status"] == "ERROR" and err["error_message"] == "FAILED_DOWNLOADING_VIDEO"
        assert err["reason"].startswith("FAILED_DOWNLOADING_VIDEO: ") and err["error_explanation"]
        assert by_id["13060"]["status"] == "CANCELLED" and by_id["13060"]["reason"] == "cancelled"
        finals = await api.get("/v1/finals?since=1h&limit=3")
        assert len(finals.body["items"]) == 3 and finals.body["next_cursor"]
        rest = await api.get(f"/v1/finals?since=1h&cursor={finals.body['next_cursor']}")
        all_ids = [e["container_id"] for e in finals.body["items"] + rest.body["items"]]
        assert sorted(all_ids) == sorted(
            ["13060", "13061", "13062", "13063", "13064", "13071", "13072", "13073"]
        )
        await asyncio.sleep(1.1)
        assert (await api.get("/v1/failures?since=1s")).body["items"] == []


async def _throttled(api: Api, account: str) -> bool:
    got = await api.get("/v1/accounts")
    rows = {a["account"]: a for a in got.body["items"]}
    return account in rows and rows[account]["throttled_total"] >= 1


async def test_accounts_show_throttling_quota_and_rejected_tokens_never_tokens(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = settings.model_copy(update={"throttle_backoff_seconds": 30.0})
    sim.state.set_script("13081", ["throttle"])
    sim.state.set_script("13082", ["token_expired"])
    async with running_api(settings) as api, running_worker(settings):
        await api.post("/v1/containers", json={"container_id": "13081", "account": "881"})
        await api.post("/v1/containers", json={"container_id": "13082", "account": "882"})
        await wait_until(lambda: _throttled(api, "881"), timeout=10)
        client = PollerClient.from_settings(settings, redis)
        r = await client.wait("13082", timeout=10)
        assert r is not None and r.status == "FAILED"
        await redis.set(
            keys.quota("881"),
            json.dumps(
                {
                    "user_id": "881",
                    "fetched_at": time.time(),
                    "posts_remaining": 249,
                    "limit": {
                        "quota_usage": 1,
                        "config": {"quota_total": 250, "quota_duration": 86400},
                    },
                }
            ),
        )
        got = await api.get("/v1/accounts")
        rows = {a["account"]: a for a in got.body["items"]}
        a = rows["881"]
        assert a["throttled"] and 0 < a["pause_left_s"] <= 30 and a["throttle_level"] == 1
        assert a["throttled_until"] > got.body["now"] and a["throttled_for_s"] >= 0
        assert a["quota"]["posts_remaining"] == 249 and a["quota"]["quota_total"] == 250
        assert rows["882"]["token_rejected"] is True and rows["881"]["token_rejected"] is False
        overview = await api.get("/v1/overview")
        assert overview.status == 200
        # No answer of any read route carries the token (or its fingerprint).
        pages = [
            await api.get(p)
            for p in (
                "/v1/containers/13082",
                "/v1/accounts",
                "/v1/failures",
                "/v1/finals",
                "/v1/inflight",
                "/v1/workers",
                "/v1/overview",
                "/v1/dead-letters/intake",
                "/v1/dead-letters/webhooks",
                "/v1/openapi.json",
            )
        ]
        page = await api.call("GET", "/", headers={"Accept": "text/html"}, check=False)
        raw_fp = await redis.hget(keys.account("882"), "token_rejected_fp")  # type: ignore[misc]
        fp = (raw_fp or b"").decode()
        assert fp
        for answer in [*pages, page]:
            assert answer.status == 200
            assert TEST_TOKEN not in answer.text and fp not in answer.text


async def test_overview_counts_and_minutes(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("13091", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("13092", ["ERROR"])
    async with running_api(settings) as api, running_worker(settings):
        await api.post("/v1/containers", json={"container_ids": ["13091", "13092"]})
        client = PollerClient.from_settings(settings, redis)
        for cid in ("13091", "13092"):
            assert (await client.wait(cid, timeout=10)) is not None
        await stats.MINUTES.flush(redis, keys)  # the worker's next flush, now

        async def sees_the_worker() -> bool:
            # A sample serves every request for a second (then a new one is taken).
            return bool((await api.get("/v1/overview")).body["workers"]["alive"] == 1)

        await wait_until(sees_the_worker, timeout=5)
        got = await api.get("/v1/overview")
    body = got.body
    assert len(body["minutes"]) == 60 and body["inflight"] == 0
    last = body["minutes"][-1:] + body["minutes"][-2:-1]
    assert sum(m["checks"] for m in last) >= 3
    finals: dict[str, int] = {}
    for m in last:
        for k, v in m["finals"].items():
            finals[k] = finals.get(k, 0) + v
    assert finals.get("FINISHED", 0) >= 1 and finals.get("ERROR", 0) >= 1


ODD_SEGMENTS = [
    "%00",
    "%ff",
    "..",
    "%2e%2e",
    "\uff11\uff12\uff13",
    "²",
    "9" * 40,
    "-1",
    "1-0-0",
    "%20",
]
ODD_QUERIES = [
    "limit=²",
    "limit=1e3",
    "cursor=²",
    "cursor=" + "9" * 200,
    "since=²h",
    "since=1h%00",
    "wait=1e309",
    "wait=²",
    "last_event_id=²",
]


async def test_odd_input_never_answers_500(redis: Redis, settings: Settings) -> None:
    """Whatever the path segment, query or body: a 4xx with a JSON error, never a 500."""
    async with running_api(settings, sample=False) as api:
        for route in ROUTES:
            if route.name in ("events", "static", "login", "logout", "login_form"):
                continue
            for segment in ODD_SEGMENTS:
                path = (
                    route.path.replace("{container_id}", segment)
                    .replace("{kind}", "intake" if "{letter_id}" in route.path else segment)
                    .replace("{letter_id}", segment)
                )
                if path == route.path and segment != ODD_SEGMENTS[0]:
                    continue
                for query in ODD_QUERIES:
                    got = await api.call(
                        route.method,
                        f"{path}?{query}",
                        data=b'{"container_id": "\\u0000"}',
                        headers={"Content-Type": "application/json"},
                        check=False,
                    )
                    assert got.status < 500, (route.method, path, query, got.text[:300])
                    if path.startswith("/v1") and got.status >= 400:
                        assert got.code(), got.text
        assert len(api.seen) > 500  # the loops above really ran
        for header in ("²", "1" * 300, "0-²"):
            got = await api.call("GET", "/v1/events", headers={"Last-Event-ID": header})
            assert got.status == 400 and got.code() == "invalid_parameter"


async def test_a_carousel_and_a_reply_over_http(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """The same fields as ``enqueue``: ``children`` (a carousel under one parent), ``reply_to``."""
    for kid in ("13062", "13063"):
        sim.state.set_script(kid, ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("13061", ["FINISHED"])
    sim.state.set_script("13064", ["FINISHED"])
    async with running_api(settings) as api:
        got = await api.post(
            "/v1/containers", json={"container_id": "13061", "children": ["13062", "13063"]}
        )
        assert got.status == 202, got.body
        assert [o["container_id"] for o in got.body["outcomes"]] == ["13061"]
        reply = await api.post("/v1/containers", json={"container_id": "13064", "reply_to": "99"})
        assert reply.status == 202
        bad = await api.post(
            "/v1/containers", json={"container_ids": ["13065"], "children": ["1", "2"]}
        )
        assert bad.status == 422 and bad.code() == "invalid_body"
        lone = await api.post("/v1/containers", json={"container_id": "13066", "children": ["1"]})
        assert lone.status >= 400 and "2 to 20" in json.dumps(lone.body)
        async with running_worker(settings):
            parent = await api.get("/v1/containers/13061?wait=20")
            child = await api.get("/v1/containers/13062?wait=20")
            replied = await api.get("/v1/containers/13064?wait=20")
    assert parent.status == 200 and parent.body["status"] == "FINISHED", parent.body
    assert child.status == 200 and child.body["status"] == "FINISHED"
    assert replied.body["reply_to"] == "99"
    # The parent was asked only once every child was FINISHED.
    assert sim.state.calls_for("13061").count == 1
    assert await redis.exists(Keys(settings.key_prefix).result("13066")) == 0
