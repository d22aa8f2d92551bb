"""Issue 23: the console's pages over HTTP (the real application, a real Redis): the list of
containers with its filters and cursors, a container's page, the search box, confirmation and
action with a reason stored with the key's name, read-only sessions without write controls,
HTML error pages for browsers and JSON for API clients."""

from __future__ import annotations

from redis.asyncio import Redis

from config import Settings
from tests.web_helpers import RO_KEY, RW_KEY, Api, running_api
from worker.store.keys import Keys
from worker.web.access import KeyRing

HTML = {"Accept": "text/html"}


async def field(redis: Redis, key: str, name: str) -> str:
    raw = await redis.hget(key, name)  # type: ignore[misc]
    return raw.decode() if raw else ""


def fingerprint(key: str) -> str:
    return KeyRing.build([key]).keys[0].fingerprint


async def _enqueue(api: Api, ids: list[str], account: str) -> None:
    got = await api.post("/v1/containers", json={"container_ids": ids, "account": account})
    assert got.status == 202


async def test_list_filter_page_and_act_with_a_reason(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    async with running_api(settings) as api:
        await _enqueue(api, ["23001", "23002", "23003"], "111")
        await _enqueue(api, ["23101"], "222")
        # In flight, one account's; the ids are links to their pages.
        page = await api.call("GET", "/containers?status=inflight&account=111", headers=HTML)
        assert page.status == 200, page.text[:500]
        for cid in ("23001", "23002", "23003"):
            assert f'href="/containers/{cid}"' in page.text
        assert "23101" not in page.text
        assert 'name="target"' in page.text  # write controls for a read-write key
        # Paged with the API's cursors.
        first = await api.call("GET", "/containers?status=inflight&limit=2", headers=HTML)
        assert first.text.count('name="target" value=') == 2
        nxt = first.text.split('id="next-page"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0]
        second = await api.call("GET", nxt.replace("&amp;", "&"), headers=HTML)
        assert second.text.count('name="target" value=') == 2
        # The API's list route takes the same filter.
        listed = await api.call("GET", "/v1/inflight?account=222")
        assert [i["container_id"] for i in listed.body["items"]] == ["23101"]

        # A container's page: every field, and its timeline (README, "History") from Redis.
        one = await api.call("GET", "/containers/23001", headers=HTML)
        assert one.status == 200 and "deadline_at" in one.text
        assert "Container <code>23001</code>" in one.text and "Macro" not in one.text
        assert 'href="/v1/containers/23001"' in one.text
        assert 'data-kind="enqueued"' in one.text and "poll started" in one.text
        await redis.delete(keys.history("23002"))
        assert (
            "No history recorded" in (await api.call("GET", "/containers/23002", headers=HTML)).text
        )
        # Search: an exact id goes to its page, a prefix lists.
        exact = await api.call("GET", "/search?q=23001", headers=HTML)
        assert exact.status == 303 and exact.headers["Location"] == "/containers/23001"
        prefix = await api.call("GET", "/search?q=230", headers=HTML)
        assert all(f"/containers/230{n}" in prefix.text for n in ("01", "02", "03"))
        assert "23101" not in prefix.text

        # Confirm (nothing changes), then cancel with a reason.
        confirm = await api.post(
            "/console/confirm",
            data={"action": "cancel", "target": ["23001", "23002"]},
            headers=HTML,
        )
        assert confirm.status == 200 and 'name="reason"' in confirm.text
        assert await field(redis, keys.result("23001"), "status") != "CANCELLED"
        done = await api.post(
            "/console/act",
            data={"action": "cancel", "target": ["23001", "23002"], "reason": "wrong video"},
            headers=HTML,
        )
        assert done.status == 200 and done.text.count('data-outcome="cancelled"') == 2
        last_error = await field(redis, keys.result("23001"), "last_error")
        assert last_error == f"cancelled by key {fingerprint(RW_KEY)}: wrong video"
        audit = await redis.xrange(keys.audit)
        assert len(audit) == 2
        assert audit[0][1][b"reason"] == b"wrong video"
        assert audit[0][1][b"actor"] == f"key {fingerprint(RW_KEY)}".encode()
        # No reason: refused (an HTML page for a browser).
        bare = await api.post(
            "/console/act", data={"action": "cancel", "target": "23003"}, headers=HTML
        )
        assert bare.status == 400 and "reason is required" in bare.text
        # Everything the filter shows: failures of account 111 (the two cancelled).
        every = await api.post(
            "/console/confirm?scope=filter",
            data={"action": "poll", "status": "failures", "account": "111", "since": "1h"},
            headers=HTML,
        )
        assert every.text.count('name="target"') == 2
        polled = await api.post(
            "/console/act",
            data={"action": "poll", "target": ["23001", "23002"], "reason": "retry"},
            headers=HTML,
        )
        assert polled.text.count('class="ok"') == 2, polled.text[-1500:]
        assert await field(redis, keys.result("23001"), "status") != "CANCELLED"
        # Its story: started, cancelled with the key's name and reason, started again.
        story = await api.call("GET", "/containers/23001", headers=HTML)
        kinds = [k.split('"', 1)[0] for k in story.text.split('data-kind="')[1:]]
        assert kinds == ["enqueued", "cancelled", "enqueued"], kinds
        assert "wrong video" in story.text and "poll restarted" in story.text
        failures = await api.call("GET", "/v1/failures?account=111&status=CANCELLED")
        assert {i["container_id"] for i in failures.body["items"]} == {"23001", "23002"}

        # A read-only key sees no write control at all.
        for path in ("/", "/containers?status=inflight", "/containers/23003"):
            ro = await api.call("GET", path, key=RO_KEY, headers=HTML)
            assert ro.status == 200
            for control in ('name="target"', "/console/confirm", 'name="csrf"'):
                assert control not in ro.text, (path, control)
        refused = await api.post(
            "/console/act",
            key=RO_KEY,
            data={"action": "cancel", "target": "23003", "reason": "x"},
            headers=HTML,
        )
        assert refused.status == 403 and "<!doctype html>" in refused.text


async def test_error_pages_for_browsers_json_for_clients(redis: Redis, settings: Settings) -> None:
    async with running_api(settings) as api:
        missing = await api.call("GET", "/no/such/page", headers=HTML)
        assert missing.status == 404 and "<!doctype html>" in missing.text
        assert "Content-Security-Policy" in missing.headers
        unknown = await api.call("GET", "/containers/99999", headers=HTML)
        assert unknown.status == 404 and "container_not_found" in unknown.text
        as_json = await api.call("GET", "/no/such/page")
        assert as_json.status == 404 and as_json.code() == "not_found"
        api_route = await api.call("GET", "/v1/containers/99999", headers=HTML)
        assert api_route.status == 404 and api_route.code() == "container_not_found"
        bad = await api.call("GET", "/containers?status=NOPE", headers=HTML)
        assert bad.status == 400 and "<!doctype html>" in bad.text
        assert (await api.call("GET", "/v1/finals?status=NOPE", check=False)).status == 400
