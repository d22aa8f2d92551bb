"""Issue 13: what an operator steers, against a real Redis, the simulator and a real worker:
cancel (fenced against a run that still holds the job), dead letters (list, replay re-signed,
discard) of the webhooks and of the intake; and the console's session, CSRF and escaping."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.receivers import webhook_receiver
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_webhooks import SECRET, hook_settings
from tests.web_helpers import RO_KEY, RW_KEY, running_api
from tests.webhook_verify import verifies
from worker import PollerClient
from worker.core.decisions import Decision
from worker.core.result import PollResult
from worker.store.admin import AdminStore, CancelOutcome
from worker.store.keys import Keys
from worker.store.queue import JobQueue
from worker.store.results import ResultStore
from worker.web.console import SESSION_COOKIE


async def test_a_cancel_cannot_be_overwritten_by_the_run_that_holds_the_job(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    store = ResultStore.from_settings(redis, settings)
    admin = AdminStore(store)
    queue = JobQueue(redis, keys, job_ttl_seconds=settings.result_ttl_seconds)
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue("13101")
    claim = await queue.claim("test-worker", limit=10, lease_ms=30_000)
    (job,) = claim.jobs  # a run holds the job now, as a worker mid-check would
    assert job.state is not None
    current = PollResult.from_hash(job.state)

    done = await admin.cancel("13101", reason="operator")
    assert done.outcome is CancelOutcome.CANCELLED and done.event_id
    # The run comes back with the API's answer: refused, the cancel stands.
    late = await store.record(
        job, current, Decision("FINISHED", True, None, last_api_status="FINISHED")
    )
    assert late.outcome == "stale" and late.reason == "already final"
    r = await client.get("13101")
    assert r is not None and (r.status, r.final, r.last_error) == (
        "CANCELLED",
        True,
        "cancelled: operator",
    )
    events = await redis.xrange(keys.events)
    assert [f[b"status"] for _, f in events] == [b"CANCELLED"]
    assert await redis.zcard(keys.queue) == 0 and await redis.zcard(keys.inflight) == 0
    assert (await admin.cancel("13101")).outcome is CancelOutcome.FINAL

    # A publish call that may be under way is not cancelled over.
    await client.enqueue("13102", account="42", publish=True)
    await redis.hset(keys.result("13102"), "publish_status", "in_flight")  # type: ignore[misc]
    refused = await admin.cancel("13102")
    assert refused.outcome is CancelOutcome.PUBLISHING
    r2 = await client.get("13102")
    assert r2 is not None and not r2.final
    # A publish that was only pending is dropped with the cancel.
    await redis.hset(keys.result("13102"), "publish_status", "pending")  # type: ignore[misc]
    assert (await admin.cancel("13102")).outcome is CancelOutcome.CANCELLED
    r3 = await client.get("13102")
    assert r3 is not None and r3.publish_status is None


async def test_a_dead_webhook_is_replayed_signed_afresh(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = hook_settings(settings, webhook_max_attempts=1)
    sim.state.set_script("13111", ["FINISHED"])
    async with (
        webhook_receiver([500]) as rec,
        running_api(settings) as api,
        running_worker(settings),
    ):
        await api.post("/v1/containers", json={"container_id": "13111", "webhook_url": rec.url})

        async def dead() -> bool:
            return bool((await api.get("/v1/dead-letters/webhooks")).body["total"] == 1)

        await wait_until(dead, timeout=10)
        page = await api.get("/v1/dead-letters/webhooks")
        (letter,) = page.body["items"]
        assert (letter["container_id"], letter["status"], letter["attempts"]) == (
            "13111",
            "FINISHED",
            1,
        )
        assert letter["reason"] == "HTTP 500" and letter["replayable"]
        assert letter["url"].endswith("/hook?tenant=***")  # query values masked
        assert letter["body"]["container_id"] == "13111" and letter["body"]["status"] == "FINISHED"
        first_body, first_headers = rec.got[0]
        time.sleep(1.1)  # noqa: ASYNC251 - a whole second later, so the timestamp must differ
        rec.answers[:] = [200]
        forbidden = await api.post(f"/v1/dead-letters/webhooks/{letter['id']}/replay", key=RO_KEY)
        assert forbidden.status == 403
        replayed = await api.post(f"/v1/dead-letters/webhooks/{letter['id']}/replay")
        assert replayed.status == 200 and replayed.body == {
            "outcome": "replayed",
            "id": letter["id"],
            "entry_id": None,
        }
        await wait_until(lambda: len(rec.got) == 2, timeout=10)
        client = PollerClient.from_settings(settings, redis)
        await wait_until(lambda: _hook(client, "13111", "delivered"), timeout=10)
        again = await api.post(f"/v1/dead-letters/webhooks/{letter['id']}/replay")
        assert again.status == 404 and again.code() == "dead_letter_not_found"
        assert (await api.get("/v1/dead-letters/webhooks")).body["total"] == 0
    body, headers = rec.got[1]
    assert body == first_body  # the same delivery ...
    assert verifies(SECRET, body, headers)  # ... signed afresh
    assert int(headers["webhook-timestamp"]) > int(first_headers["webhook-timestamp"])
    # The same webhook-id: the receiver's idempotency key says it is the same event.
    assert headers["webhook-id"] == first_headers["webhook-id"] == letter["delivery_id"]
    assert headers["X-Threads-Poller-Delivery"] == first_headers["X-Threads-Poller-Delivery"]


async def _hook(client: PollerClient, cid: str, status: str) -> bool:
    r = await client.get(cid)
    return r is not None and r.webhook_status == status


async def test_a_cancel_is_delivered_to_the_webhook(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = hook_settings(settings.model_copy(update={"poll_max_seconds": 30.0}))
    sim.state.set_script("13121", ["IN_PROGRESS"])
    async with (
        webhook_receiver([200]) as rec,
        running_api(settings) as api,
        running_worker(settings),
    ):
        await api.post("/v1/containers", json={"container_id": "13121", "webhook_url": rec.url})
        await wait_until(lambda: sim.state.calls_for("13121").count >= 1, timeout=10)
        assert (await api.post("/v1/containers/13121/cancel")).status == 200
        await wait_until(lambda: len(rec.got) == 1, timeout=10)
    body, headers = rec.got[0]
    data = json.loads(body)
    assert (data["status"], data["final"], data["last_error"]) == ("CANCELLED", True, "cancelled")
    assert verifies(SECRET, body, headers)


async def test_intake_dead_letters_list_replay_discard(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("13131", ["FINISHED"])
    async with running_api(settings) as api, running_worker(settings):
        await redis.xadd(keys.intake, {"container_id": "13130", "force": "maybe"})

        async def count(n: int) -> bool:
            return bool((await api.get("/v1/dead-letters/intake")).body["total"] == n)

        await wait_until(lambda: count(1), timeout=10)
        (bad,) = (await api.get("/v1/dead-letters/intake")).body["items"]
        assert bad["fields"] == {"container_id": "13130", "force": "maybe"}
        assert "force must be" in bad["reason"] and bad["entry_id"]
        # Replayed as it is: the intake's rules apply again, and it is dead-lettered again.
        got = await api.post(f"/v1/dead-letters/intake/{bad['id']}/replay")
        assert got.status == 200 and got.body["entry_id"]
        await wait_until(lambda: _dead_entry(api, got.body["entry_id"]), timeout=10)
        # A dead letter whose fields are fine (the rules changed, or it was fixed) is polled.
        fixed = await redis.xadd(
            keys.dead_letters,
            {
                "entry_id": "1-1",
                "reason": "unknown field(s) x",
                "fields": '{"container_id": "13131"}',
            },
        )
        got = await api.post(f"/v1/dead-letters/intake/{fixed.decode()}/replay")
        assert got.status == 200
        r = await PollerClient.from_settings(settings, redis).wait("13131", timeout=10)
        assert r is not None and r.status == "FINISHED"
        cut = await redis.xadd(
            keys.dead_letters,
            {
                "entry_id": "1-2",
                "reason": "too big",
                "fields": '{"container_id": "1...[truncated]"}',
            },
        )
        refused = await api.post(f"/v1/dead-letters/intake/{cut.decode()}/replay")
        assert refused.status == 409 and refused.code() == "not_replayable"
        listed = (await api.get("/v1/dead-letters/intake?limit=1")).body
        assert len(listed["items"]) == 1 and listed["next_cursor"] and listed["total"] == 2
        rest = (await api.get(f"/v1/dead-letters/intake?cursor={listed['next_cursor']}")).body
        ids = [d["id"] for d in listed["items"] + rest["items"]]
        assert len(ids) == 2 and ids == sorted(ids, reverse=True)
        for letter_id in ids:
            gone = await api.call("DELETE", f"/v1/dead-letters/intake/{letter_id}")
            assert gone.status == 200 and gone.body == {"outcome": "discarded", "id": letter_id}
        again = await api.call("DELETE", f"/v1/dead-letters/intake/{ids[0]}")
        assert again.status == 404 and again.code() == "dead_letter_not_found"
        assert await redis.xlen(keys.dead_letters) == 0


async def _dead_entry(api: object, entry_id: str) -> bool:
    from tests.web_helpers import Api

    assert isinstance(api, Api)
    items = (await api.get("/v1/dead-letters/intake")).body["items"]
    return any(d["entry_id"] == entry_id for d in items)


async def test_console_session_csrf_and_escaping(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    async with running_api(settings) as api:
        await redis.xadd(
            keys.dead_letters,
            {
                "entry_id": "1-1",
                "reason": "<b>bold</b>",
                "fields": '{"x": "<script>alert(1)</script>"}',
            },
        )
        await api.post("/v1/containers", json={"container_id": "13141"})
        base = api.base
        http = api.http
        # What a browser sends with a form of our own pages.
        own = {"Origin": base}
        async with http.get(base + "/login") as resp:
            assert resp.status == 200 and "Content-Security-Policy" in resp.headers
        async with http.post(
            base + "/login", data={"key": "wrong-key-wrong-key-0000"}, headers=own
        ) as resp:
            assert resp.status == 401
        async with http.post(
            base + "/login", data={"key": RW_KEY}, headers={"Origin": "http://evil.example"}
        ) as resp:
            assert resp.status == 403
        async with http.post(
            base + "/login", data={"key": RW_KEY}, headers=own, allow_redirects=False
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/"
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and RW_KEY not in cookie
        session = resp.cookies[SESSION_COOKIE].value
        jar = {"Cookie": f"{SESSION_COOKIE}={session}", **own}
        async with http.get(base + "/", headers=jar) as resp:
            page = await resp.text()
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "13141" in page and "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        assert len(csrf) == 40
        # The API accepts the session too (the page's script reads /v1/events with it) ...
        async with http.get(base + "/v1/inflight", headers=jar) as resp:
            assert resp.status == 200
        # ... but a change needs the CSRF token.
        act = base + "/console/act"
        form = {"action": "cancel", "target": "13141", "reason": "wrong upload"}
        json_accept = {**jar, "Accept": "application/json"}
        async with http.post(act, data=form, headers=jar, allow_redirects=False) as resp:
            assert resp.status == 403
        async with http.post(
            base + "/v1/containers/13141/cancel", headers=jar, allow_redirects=False
        ) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "csrf_failed"
        async with http.post(
            act, data={**form, "csrf": csrf}, headers=json_accept, allow_redirects=False
        ) as resp:
            done = await resp.json()
            assert resp.status == 200 and done["outcomes"][0]["outcome"] == "cancelled", done
        async with http.post(
            act, data={**form, "csrf": csrf}, headers=json_accept, allow_redirects=False
        ) as resp:
            again = (await resp.json())["outcomes"][0]
            assert not again["ok"] and again["outcome"] == "already_final", again
        # The one-click routes of before are gone: every action is confirmed, with a reason.
        async with http.post(
            base + "/console/containers/13141/cancel", data={"csrf": csrf}, headers=jar
        ) as resp:
            assert resp.status in (404, 405)
        async with http.post(base + "/logout", headers=jar, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        # A read-only key's session may look, not change.
        async with http.post(
            base + "/login", data={"key": RO_KEY}, headers=own, allow_redirects=False
        ) as resp:
            ro = {"Cookie": f"{SESSION_COOKIE}={resp.cookies[SESSION_COOKIE].value}", **own}
        async with http.get(base + "/", headers=ro) as resp:
            ro_csrf = (
                (await resp.text()).split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
            )
        async with http.post(
            base + "/console/act",
            data={"action": "discard", "target": "intake:1-0", "reason": "x", "csrf": ro_csrf},
            headers={**ro, "Accept": "application/json"},
        ) as resp:
            assert resp.status == 403
    r = await PollerClient.from_settings(settings, redis).get("13141")
    assert r is not None and r.status == "CANCELLED"
