"""Issue 14: carousels as one unit, replies, and the publish step's rules, against the simulator
(which counts status and publish calls per container, on its side)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.waiting import final_of
from tests.helpers.worker import running_worker
from tests.integration.test_publish import ACCOUNT, pub_settings
from worker import InvalidIdError, PollerClient, enqueue
from worker.store.admin import AdminStore, CancelOutcome
from worker.store.keys import Keys
from worker.store.results import ResultStore

PARENT, KIDS = "9501", ["9511", "9512", "9513"]


def carousel_settings(settings: Settings, **more: object) -> Settings:
    return pub_settings(settings, **{"poll_max_seconds": 3.0, **more})


async def test_a_carousel_polls_its_parent_only_once_every_child_is_finished(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = carousel_settings(settings)
    sim.state.set_carousel(PARENT, KIDS)
    sim.state.set_script(KIDS[0], ["FINISHED"])
    sim.state.set_script(KIDS[1], ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script(KIDS[2], ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    sim.state.set_script(PARENT, ["IN_PROGRESS", "FINISHED"])
    client = PollerClient.from_settings(settings, redis)
    out = await client.enqueue_carousel(PARENT, KIDS, account=ACCOUNT)
    assert (out.container_id, out.outcome) == (PARENT, "enqueued")
    waiting = await client.get(PARENT)
    assert waiting is not None and waiting.children == tuple(KIDS)
    assert waiting.children_pending == 3 and not waiting.final
    async with running_worker(settings):
        r = await final_of(redis, settings, PARENT)
    assert r.status == "FINISHED" and r.children_pending == 0
    parent_calls = sim.state.calls_for(PARENT)
    # No extra calls: the parent is not polled before its children are all FINISHED.
    assert (parent_calls.count, parent_calls.early_parent_calls) == (2, 0)
    last_child = max(t for kid in KIDS for t in sim.state.calls_for(kid).times)
    assert min(parent_calls.times) >= last_child
    assert r.children_ready_at is not None and r.deadline_at is not None
    assert r.deadline_at - r.children_ready_at == pytest.approx(3.0, abs=0.01)
    # Each child has its own readable result, naming its parent.
    for kid, calls in zip(KIDS, (1, 2, 3), strict=True):
        child = await client.get(kid)
        assert child is not None and (child.status, child.carousel_parent) == ("FINISHED", PARENT)
        assert sim.state.calls_for(kid).count == calls == child.checks


async def test_a_failed_child_fails_the_carousel_fast_naming_it(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = carousel_settings(settings, poll_max_seconds=30.0)
    sim.state.set_carousel(PARENT, KIDS)
    sim.state.set_script(KIDS[0], ["IN_PROGRESS"])  # still processing when its sibling fails
    sim.state.set_script(KIDS[1], ["IN_PROGRESS", "ERROR:FAILED_DOWNLOADING_VIDEO"])
    sim.state.set_script(KIDS[2], ["FINISHED"])
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue_carousel(PARENT, KIDS, account=ACCOUNT, publish=True)
    async with running_worker(settings):
        r = await final_of(redis, settings, PARENT, timeout=5)
    assert (r.status, r.failed_child, r.failed_child_status) == (
        "CHILD_FAILED",
        KIDS[1],
        "ERROR",
    )
    assert r.error_message == "FAILED_DOWNLOADING_VIDEO" and r.error_explanation
    assert r.last_error is not None and f"carousel child {KIDS[1]} ended ERROR" in r.last_error
    assert r.finalized_at is not None and r.enqueued_at is not None
    assert r.finalized_at - r.enqueued_at < 2.0  # fast: not at the end of the 30 s window
    assert sim.state.calls_for(PARENT).count == 0
    assert sim.state.calls_for(PARENT).publish_calls == 0
    events = [e for _, e in await redis.xrange(keys.events) if e[b"container_id"] == b"9501"]
    assert len(events) == 1 and events[0][b"status"] == b"CHILD_FAILED"


async def test_a_carousel_is_published_once_as_one_post(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = carousel_settings(settings)
    sim.state.set_carousel(PARENT, KIDS[:2])
    for cid in (*KIDS[:2], PARENT):
        sim.state.set_script(cid, ["IN_PROGRESS", "FINISHED"])
    sim.state.set_quota(ACCOUNT, quota_usage=7)
    await PollerClient.from_settings(settings, redis).enqueue_carousel(
        PARENT, KIDS[:2], account=ACCOUNT, publish=True
    )
    async with running_worker(settings):
        r = await final_of(redis, settings, PARENT)
    assert (r.status, r.publish_status) == ("PUBLISHED", "published")
    assert r.media_id == sim.state.published_media_id(PARENT)
    calls = sim.state.calls_for(PARENT)
    assert (calls.publish_calls, calls.publishes, calls.early_parent_calls) == (1, 1, 0)
    assert all(sim.state.calls_for(kid).publish_calls == 0 for kid in KIDS[:2])
    assert sim.state.quota_of(ACCOUNT)["quota_usage"] == 8  # one post


async def test_carousels_through_the_intake_and_the_cli(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    project_env: dict[str, str],
) -> None:
    settings = carousel_settings(settings)
    sim.state.set_script("96*", ["FINISHED"])
    await redis.xadd(keys.intake, {"container_id": "9601", "children": "9611,9612"})
    env = dict(project_env, KEY_PREFIX=settings.key_prefix)
    code, out, err = await run_cli(
        "enqueue", "--carousel", "9602", "--children", "9621,9622,9623", "--json", env=env
    )
    assert code == 0, err
    assert '"container_id": "9602"' in out and '"enqueued"' in out
    code, _, err = await run_cli("enqueue", "--carousel", "9603", "--children", "9631", env=env)
    assert code == 2 and "2 to 20 children" in err
    async with running_worker(settings):
        for parent in ("9601", "9602"):
            assert (await final_of(redis, settings, parent)).status == "FINISHED"
    assert (await final_of(redis, settings, "9612")).carousel_parent == "9601"


@pytest.mark.parametrize(
    "children",
    [["9711"], [f"97{i:02d}" for i in range(21)], ["9711", "9711"], ["9700", "9711"], ["x", "1"]],
    ids=["one", "21", "repeated", "parent-itself", "not-an-id"],
)
async def test_a_bad_carousel_is_refused_and_writes_nothing(
    redis: Redis, settings: Settings, children: list[str]
) -> None:
    client = PollerClient.from_settings(settings, redis)
    with pytest.raises(InvalidIdError):
        await client.enqueue_carousel("9700", children)
    assert await redis.dbsize() == 0


async def test_a_reply_spends_the_reply_quota_and_waits_its_settle_time(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings, publish_reply_settle_seconds=0.6)
    sim.state.set_script("9801", ["IN_PROGRESS", "FINISHED"])
    # Published sooner than 0.5 s after FINISHED, the simulator's reply loses its reply_to_id.
    sim.state.set_reply("9801", "18000000000000777", settle_seconds=0.5)
    sim.state.set_quota(ACCOUNT, quota_usage=250, reply_quota_usage=40)  # no posts left
    await enqueue(
        redis,
        "9801",
        account=ACCOUNT,
        publish=True,
        reply_to="18000000000000777",
        settings=settings,
    )
    async with running_worker(settings):
        r = await final_of(redis, settings, "9801")
    assert (r.status, r.reply_to) == ("PUBLISHED", "18000000000000777")
    assert (r.reply_quota_usage, r.reply_quota_total) == (40, 1000)
    assert r.quota_usage is None
    assert r.published_at is not None and r.finished_at is not None
    assert r.published_at - r.finished_at >= 0.6
    calls = sim.state.calls_for("9801")
    assert (calls.publishes, calls.lost_reply_to) == (1, 0)
    assert sim.state.quota_of(ACCOUNT)["reply_quota_usage"] == 41


async def test_an_exhausted_reply_quota_is_quota_exhausted_without_a_publish(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings, publish_reply_settle_seconds=0.1)
    sim.state.set_script("9802", ["FINISHED"])
    sim.state.set_reply("9802", "18000000000000777")
    sim.state.set_quota(ACCOUNT, quota_usage=0, reply_quota_usage=1000)
    await enqueue(redis, "9802", account=ACCOUNT, publish=True, reply_to="1", settings=settings)
    async with running_worker(settings):
        r = await final_of(redis, settings, "9802")
    assert (r.status, r.reply_quota_usage, r.reply_quota_total) == ("QUOTA_EXHAUSTED", 1000, 1000)
    assert r.last_error is not None and "reply quota used up" in r.last_error
    assert sim.state.calls_for("9802").publish_calls == 0


@pytest.mark.parametrize("fault", ["code10_after_publish", "noid_after_publish"])
async def test_an_ambiguous_publish_that_published_is_settled_by_polling(
    redis: Redis, settings: Settings, sim: RunningSimulator, fault: str
) -> None:
    settings = pub_settings(settings)
    sim.state.set_script("9803", ["FINISHED"])
    sim.state.set_publish_fault("9803", fault)
    await enqueue(redis, "9803", account=ACCOUNT, publish=True, settings=settings)
    async with running_worker(settings):
        r = await final_of(redis, settings, "9803")
    assert (r.status, r.publish_status, r.media_id) == ("PUBLISHED", "unconfirmed", None)
    assert r.publish_note is not None and "media id unknown" in r.publish_note
    calls = sim.state.calls_for("9803")
    assert (calls.publish_calls, calls.publishes) == (1, 1)


async def test_no_publish_before_the_minimum_age(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = pub_settings(settings, publish_min_age_seconds=1.5)
    sim.state.set_script("9804", ["FINISHED"])
    await enqueue(redis, "9804", account=ACCOUNT, publish=True, settings=settings)
    async with running_worker(settings):
        r = await final_of(redis, settings, "9804")
    assert r.status == "PUBLISHED"
    assert r.published_at is not None and r.enqueued_at is not None
    assert r.published_at - r.enqueued_at >= 1.5
    assert sim.state.calls_for("9804").count == 1  # the wait costs no status call


async def test_a_cancelled_child_fails_its_carousel_at_once(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    """Cancel (HTTP API, CLI) of one item: the parent ends CHILD_FAILED naming it, not later."""
    settings = carousel_settings(settings, poll_max_seconds=30.0)
    sim.state.set_carousel(PARENT, KIDS[:2])
    for kid in KIDS[:2]:
        sim.state.set_script(kid, ["IN_PROGRESS"] * 40)
    client = PollerClient.from_settings(settings, redis)
    await client.enqueue_carousel(PARENT, KIDS[:2], account=ACCOUNT)
    admin = AdminStore(ResultStore.from_settings(redis, settings))
    async with running_worker(settings):
        cancelled = await admin.cancel(KIDS[0], reason="wrong video")
        assert cancelled.outcome == CancelOutcome.CANCELLED
        r = await final_of(redis, settings, PARENT, timeout=5)
    assert (r.status, r.failed_child, r.failed_child_status) == (
        "CHILD_FAILED",
        KIDS[0],
        "CANCELLED",
    )
    assert r.finalized_at is not None and r.enqueued_at is not None
    assert r.finalized_at - r.enqueued_at < 5.0  # not at the end of the 30 s window
    assert sim.state.calls_for(PARENT).count == 0


async def test_carousels_do_not_overlap_and_a_child_is_never_published_alone(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    project_env: dict[str, str],
) -> None:
    """Issue 20 #6: a container belongs to at most one live carousel (a second is refused with a
    reason, at every door), a live carousel's child cannot be forced or published alone, and a
    container polled with publish that is then named a child loses its own publish."""
    settings = carousel_settings(settings, poll_max_seconds=5.0)
    client = PollerClient.from_settings(settings, redis)
    sim.state.set_script("9901", ["FINISHED"])
    # Polled on its own with publish, then named a child before its publish is claimed.
    await client.enqueue("9901", publish=True, account=ACCOUNT)
    first = await client.enqueue_carousel("9900", ["9901", "9902"], publish=True, account=ACCOUNT)
    assert first.outcome == "enqueued"
    assert await redis.hget(keys.result("9901"), "publish") is None  # type: ignore[misc]
    # A second live carousel naming the same child is refused, and writes nothing.
    second = await client.enqueue_carousel("9910", ["9902", "9911"], publish=True)
    assert (second.outcome, "belongs to carousel 9900" in second.reason) == ("refused", True)
    assert not await redis.exists(keys.result("9910"), keys.result("9911"))
    # The child alone, forced or with publish: refused while its carousel is live.
    alone = await client.enqueue("9902", force=True, publish=True)
    assert alone.outcome == "refused" and "9900" in alone.reason
    env = dict(project_env, KEY_PREFIX=settings.key_prefix)
    code, out, _ = await run_cli(
        "enqueue", "--carousel", "9920", "--children", "9901,9921", env=env
    )
    assert code == 2 and "refused: child 9901 belongs to carousel 9900" in out
    await redis.xadd(keys.intake, {"container_id": "9930", "children": "9902,9931"})
    sim.state.set_script("99*", ["FINISHED"])
    async with running_worker(settings):
        assert (await final_of(redis, settings, "9900")).status == "PUBLISHED"
        await _dead_letter_says(redis, keys, "refused: child 9902 belongs to carousel 9900")
    # Only the carousel was published: never a child on its own.
    assert sim.state.calls_for("9900").publish_calls == 1
    assert sim.state.calls_for("9901").publish_calls == 0
    assert sim.state.calls_for("9902").publish_calls == 0


async def _dead_letter_says(redis: Redis, keys: Keys, words: str) -> None:
    from tests.helpers.waiting import wait_until

    async def found() -> bool:
        letters = await redis.xrange(keys.dead_letters)
        return any(words in fields[b"reason"].decode() for _, fields in letters)

    await wait_until(found, timeout=10)
