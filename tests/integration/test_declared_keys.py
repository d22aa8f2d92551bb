"""Every key a script touches is one of its KEYS (issue 22: cluster mode, Dragonfly), watched on
a real redis-server (tests/declared_keys.py) through the paths that learn keys as they read: a
carousel's children and parent, a cancelled child, a forced re-poll of a live carousel's child,
a child taken into a second carousel, the minute's stats hash of a cancel. The whole suite runs
under the same watch with ``TP_WATCH_KEYS=1``."""

from __future__ import annotations

from redis.asyncio import Redis

from bench.harness import HOST, RedisServer
from config import Settings
from simulator import RunningSimulator
from tests.declared_keys import KeyWatch, describe
from tests.helpers.waiting import final_of
from tests.helpers.worker import running_worker
from tests.integration.test_publish import ACCOUNT, pub_settings
from tests.integration.test_webhooks import hook_settings
from worker import PollerClient
from worker.store.admin import AdminStore, CancelOutcome
from worker.store.keys import Keys

PARENT, KIDS = "9601", ["9611", "9612", "9613"]
SECOND = "9602"


async def test_the_scripts_touch_only_the_keys_they_are_given(
    redis_server: RedisServer, redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = hook_settings(pub_settings(settings, poll_max_seconds=30.0))
    sim.state.set_carousel(PARENT, KIDS)
    sim.state.set_script(KIDS[0], ["FINISHED"])
    sim.state.set_script(KIDS[1], ["IN_PROGRESS"] * 50)
    sim.state.set_script(KIDS[2], ["IN_PROGRESS"] * 50)
    sim.state.set_script(PARENT, ["FINISHED"])
    sim.state.set_script("9620", ["IN_PROGRESS", "FINISHED"])
    client = PollerClient.from_settings(settings, redis)
    admin = AdminStore.from_settings(redis, settings)
    async with KeyWatch(HOST, redis_server.port) as watch:
        out = await client.enqueue_carousel(PARENT, KIDS, account=ACCOUNT, publish=True)
        assert out.outcome == "enqueued"
        await client.enqueue("9620", account=ACCOUNT, webhook_url="http://127.0.0.1:9/hook")
        async with running_worker(settings):
            # A live carousel's child, forced on its own: enqueue.lua reads the child's hash,
            # finds its carousel there and asks for that hash before it refuses.
            forced = await client.enqueue(KIDS[1], account=ACCOUNT, force=True)
            assert forced.outcome == "refused" and PARENT in forced.reason
            # A child taken into another carousel while the first is live: refused the same way.
            other = await client.enqueue_carousel(SECOND, [KIDS[2], "9630"], account=ACCOUNT)
            assert other.outcome == "refused" and PARENT in other.reason
            # A cancelled child reports to its parent (cancel.lua asks for the parent's hash
            # unless the caller named it; it names the one it read).
            done = await admin.cancel(KIDS[1], reason="declared keys")
            assert done.outcome == CancelOutcome.CANCELLED
            r = await final_of(redis, settings, PARENT, timeout=10)
            assert (r.status, r.failed_child) == ("CHILD_FAILED", KIDS[1])
            plain = await final_of(redis, settings, "9620", timeout=10)
            assert plain.status == "FINISHED"
        # The first carousel is over: its last child may now join the second.
        again = await client.enqueue_carousel(SECOND, [KIDS[2], "9630"], account=ACCOUNT)
        assert again.outcome == "enqueued"
    found = await watch.violations()
    assert not found, describe(found)
    # The watch saw the scripts at work (it would pass vacuously on an empty feed).
    assert watch.scripts_run > 20 and watch.script_commands > 200
