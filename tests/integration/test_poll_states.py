"""Every state a container can end in, end to end: real worker, real Redis, the simulator."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.helpers.waiting import finals
from tests.helpers.worker import running_worker
from worker import enqueue_many
from worker.core.result import PollResult
from worker.store.keys import Keys


async def poll_all(
    redis: Redis,
    settings: Settings,
    scripts: dict[str, list[str]],
    sim: RunningSimulator,
    timeout: float = 15.0,
) -> dict[str, PollResult]:
    for cid, steps in scripts.items():
        sim.state.set_script(cid, steps)
    await enqueue_many(redis, list(scripts), settings=settings)
    async with running_worker(settings):
        return await finals(redis, settings, list(scripts), timeout=timeout)


async def test_api_final_states(redis: Redis, settings: Settings, sim: RunningSimulator) -> None:
    scripts = {
        "101": ["IN_PROGRESS", "FINISHED"],
        "102": ["IN_PROGRESS", "IN_PROGRESS", "ERROR:FAILED_DOWNLOADING_VIDEO"],
        "103": ["EXPIRED"],
        "104": ["IN_PROGRESS", "PUBLISHED"],
        "105": ["ERROR:SOMETHING_META_ADDED_LATER"],
        "106": ["ERROR:UNKNOWN"],
    }
    r = await poll_all(redis, settings, scripts, sim)
    assert {cid: r[cid].status for cid in scripts} == {
        "101": "FINISHED",
        "102": "ERROR",
        "103": "EXPIRED",
        "104": "PUBLISHED",
        "105": "ERROR",
        "106": "ERROR",
    }
    assert r["102"].error_message == "FAILED_DOWNLOADING_VIDEO"
    assert r["102"].error_explanation and "download" in r["102"].error_explanation
    assert r["105"].error_message == "SOMETHING_META_ADDED_LATER"
    assert r["106"].error_explanation and "no reason" in r["106"].error_explanation
    # One API call per step until final, and no call after.
    assert [sim.state.calls_for(c).count for c in scripts] == [2, 3, 1, 2, 1, 1]
    assert [r[c].checks for c in scripts] == [2, 3, 1, 2, 1, 1]


async def test_timed_out_keeps_last_status_and_error(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    scripts = {"201": ["IN_PROGRESS"], "202": ["IN_PROGRESS", "503"], "203": ["STATUS:SCHEDULED"]}
    r = await poll_all(redis, settings, scripts, sim)
    assert r["201"].status == "TIMED_OUT" and r["201"].last_api_status == "IN_PROGRESS"
    assert r["201"].checks == 6 and sim.state.calls_for("201").count == 6
    assert r["202"].status == "TIMED_OUT" and r["202"].last_api_status == "IN_PROGRESS"
    assert r["202"].last_error and "503" in r["202"].last_error
    assert r["202"].last_error_kind == "transient"
    assert r["203"].status == "TIMED_OUT" and r["203"].last_api_status == "SCHEDULED"


@pytest.mark.parametrize(
    ("step", "code", "subcode", "kind"),
    [
        ("notfound", 100, 33, "not_found"),
        ("permission", 10, None, "permission"),
        ("token_expired", 190, 463, "token"),
        ("token_invalid", 190, 467, "token"),
    ],
)
async def test_failed_keeps_graph_code(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    step: str,
    code: int,
    subcode: int | None,
    kind: str,
) -> None:
    # 100/33 fails a poll only when it repeats on the next check (it has been seen once for
    # containers that do exist): test_not_found_once_is_not_final.
    repeat = 2 if kind == "not_found" else 1
    r = (await poll_all(redis, settings, {"301": ["IN_PROGRESS"] + [step] * repeat}, sim))["301"]
    assert (r.status, r.final, r.last_error_code, r.last_error_subcode, r.last_error_kind) == (
        "FAILED",
        True,
        code,
        subcode,
        kind,
    )
    assert r.last_error_fbtrace_id
    assert sim.state.calls_for("301").count == 1 + repeat


async def test_not_found_once_is_not_final(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    r = (await poll_all(redis, settings, {"302": ["notfound", "IN_PROGRESS", "FINISHED"]}, sim))[
        "302"
    ]
    assert (r.status, r.checks, r.strikes) == ("FINISHED", 3, 0)
    assert r.last_error_code == 100 and r.last_error_subcode == 33  # the first answer is kept
    assert sim.state.calls_for("302").count == 3


@pytest.mark.parametrize(
    "fault",
    [
        "500",
        "502",
        "503",
        "transient",
        "html",
        "garbage",
        "badjson",
        "empty",
    ],
)
async def test_transient_faults_never_end_a_poll(
    redis: Redis, settings: Settings, sim: RunningSimulator, fault: str
) -> None:
    r = (await poll_all(redis, settings, {"401": [fault, "IN_PROGRESS", "FINISHED"]}, sim))["401"]
    assert r.status == "FINISHED"
    assert r.checks == 3 and sim.state.calls_for("401").count == 3


@pytest.mark.parametrize("fault", ["throttle", "throttle:17", "throttle:613", "429"])
async def test_throttling_delays_checks_without_spending_them(
    redis: Redis, settings: Settings, sim: RunningSimulator, fault: str
) -> None:
    r = (await poll_all(redis, settings, {"404": [fault, "IN_PROGRESS", "FINISHED"]}, sim))["404"]
    assert r.status == "FINISHED"
    assert r.checks == 2 and r.throttled == 1 and sim.state.calls_for("404").count == 3
    assert r.last_throttled_at is not None and r.window_delay > 0


async def test_events_stream_has_one_entry_per_final_state(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    scripts = {"501": ["FINISHED"], "502": ["ERROR:INVALID_DURATION"], "503": ["IN_PROGRESS"]}
    await poll_all(redis, settings, scripts, sim)
    events = await redis.xrange(keys.events)
    got = {
        f[b"container_id"].decode(): (f[b"status"].decode(), f[b"error_message"].decode())
        for _, f in events
    }
    assert got == {
        "501": ("FINISHED", ""),
        "502": ("ERROR", "INVALID_DURATION"),
        "503": ("TIMED_OUT", ""),
    }
    assert len(events) == 3
    assert await redis.zcard(keys.inflight) == 0


async def test_result_hash_schema_and_ttl(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    await poll_all(redis, settings, {"601": ["IN_PROGRESS", "FINISHED"]}, sim)
    raw = {
        k.decode(): v.decode()
        for k, v in (await redis.hgetall(keys.result("601"))).items()  # type: ignore[misc]
    }
    # Always there, plus what the checks wrote; an empty value is a missing field, never "".
    assert set(raw) == {
        "container_id",
        "status",
        "final",
        "enqueued_at",
        "deadline_at",
        "generation",
        "runs",
        "checks",
        "last_api_status",
        "last_checked_at",
        "finalized_at",
        "updated_at",
        "last_run",
    }
    assert raw["status"] == "FINISHED" and raw["final"] == "1" and raw["checks"] == "2"
    assert float(raw["last_checked_at"]) >= float(raw["enqueued_at"])
    ttl = await redis.ttl(keys.result("601"))
    assert 0 < ttl <= settings.result_ttl_seconds


async def test_dropped_connection_is_transient(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    # aiohttp may resend an idempotent GET once on a dropped keep-alive connection, so the
    # server can see one more call than we count checks; either way the poll goes on.
    r = (await poll_all(redis, settings, {"402": ["drop", "IN_PROGRESS", "FINISHED"]}, sim))["402"]
    assert r.status == "FINISHED"
    assert 2 <= r.checks <= 3 and sim.state.calls_for("402").count == 3


async def test_slow_reply_is_a_timeout_not_a_status(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    # The server answers FINISHED after 1.5 s but our timeout is 1 s: that answer never counts.
    settings = settings.model_copy(update={"poll_max_seconds": 3.0})
    scripts = {"403": ["slow:1.5:FINISHED", "IN_PROGRESS", "ERROR:INVALID_DURATION"]}
    r = (await poll_all(redis, settings, scripts, sim))["403"]
    assert (r.status, r.error_message, r.checks) == ("ERROR", "INVALID_DURATION", 3)
