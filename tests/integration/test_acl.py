"""Issue 15, item 2: Redis ACLs as the trust boundary.

A ``redis-server`` of its own, with the users ``worker.store.acl`` describes and the default user
switched off. A producer can only XADD to the intake: it cannot read the queue or the intake
back, touch arq's keys, run scripts, FLUSHALL or anything else; a reader reads results and
events and writes nothing; the Python client's enqueue runs under the enqueuer; and the whole
worker (checks, throttling, publishing, webhooks, dead letters, the intake, heartbeats, metrics,
the reconciler, a clean stop) runs under its own user without a single refusal in ``ACL LOG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from bench.harness import RedisServer, free_port, start_redis, stop_redis
from simulator import RunningSimulator
from tests.cli_helpers import run_cli, start_worker
from tests.helpers.receivers import webhook_receiver
from tests.helpers.settings import make_settings
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.leaks import assert_no_leaks, dump_redis, http_doors
from worker import PollerClient
from worker.core.targets import WebhookPolicy
from worker.ops.health import check as health_check
from worker.store.acl import acl_setuser
from worker.store.keys import Keys

PREFIX = "threads-poller"
KEYS = Keys(PREFIX)
PASSWORDS = {
    "admin": "admin-pw-0123456789",
    "producer": "producer-pw-0123456789",
    "reader": "reader-pw-0123456789",
    "enqueuer": "enqueuer-pw-0123456789",
    "worker": "worker-pw-0123456789",
}
ROLES = {role: [role] for role in ("producer", "reader", "enqueuer", "worker")}


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-acl"))
    admin = server.client()
    command(
        admin,
        "ACL",
        "SETUSER",
        "admin",
        "reset",
        "on",
        f">{PASSWORDS['admin']}",
        "~*",
        "&*",
        "+@all",
    )
    for user, roles in ROLES.items():
        line = acl_setuser(user, roles, PREFIX, PASSWORDS[user])
        command(admin, *line.split())
    # From here on, nobody gets in without a password.
    command(admin, "ACL", "SETUSER", "default", "off")
    admin.close()
    yield server
    stop_redis(server)


def url(server: RedisServer, user: str, password: str | None = None) -> str:
    return f"redis://{user}:{password or PASSWORDS[user]}@127.0.0.1:{server.port}/0"


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(url(acl_server, "admin"))
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


@contextlib.asynccontextmanager
async def as_user(server: RedisServer, user: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url(server, user))
    try:
        yield client
    finally:
        await client.aclose()


async def refused(call: Callable[[], Any]) -> str:
    """The call fails with Redis' NOPERM (and nothing else)."""

    async def run() -> None:
        result = call()
        if inspect.isawaitable(result):
            await result

    with pytest.raises(NoPermissionError) as info:
        await run()
    return str(info.value)


def command(client: Redis | redis_sync.Redis, *args: str) -> Any:
    """Any command (redis-py leaves ``execute_command`` untyped)."""
    run: Any = client.execute_command
    return run(*args)


def denials(admin: redis_sync.Redis, user: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = admin.acl_log(count=100)  # type: ignore[assignment]
    return [e for e in entries if e.get("username") == user]


async def test_nobody_gets_in_without_a_password(acl_server: RedisServer, admin: Any) -> None:
    anonymous = Redis(host="127.0.0.1", port=acl_server.port)
    try:
        with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
            await anonymous.get("x")
    finally:
        await anonymous.aclose()
    wrong = Redis.from_url(url(acl_server, "producer", "not-the-password"))
    try:
        with pytest.raises(AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()


async def test_the_producer_can_only_xadd_to_the_intake(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    admin.xadd(KEYS.intake, {"container_id": "1"})
    admin.zadd(KEYS.queue, {"threads-poller:check:1:a": 1})
    admin.set(f"arq:job:{PREFIX}:check:1:a", b"job")
    admin.hset(KEYS.result("1"), "status", "QUEUED")
    async with as_user(acl_server, "producer") as r:
        assert await r.ping()
        assert await r.xadd(KEYS.intake, {"container_id": "9801"})
        async with PollerClient(r) as client:
            assert len(await client.submit_many(["9802", "9803"], account="5")) == 2
        # Not the queue, not the intake back, not arq's keys, not results.
        await refused(lambda: r.xrange(KEYS.intake))
        await refused(lambda: r.xread({KEYS.intake: "0"}))
        await refused(lambda: r.xlen(KEYS.intake))
        await refused(lambda: r.xreadgroup("threads-poller", "me", {KEYS.intake: ">"}))
        await refused(lambda: r.zrange(KEYS.queue, 0, -1))
        await refused(lambda: r.get(f"arq:job:{PREFIX}:check:1:a"))
        await refused(lambda: r.delete(f"arq:job:{PREFIX}:check:1:a"))
        await refused(lambda: r.hgetall(KEYS.result("1")))
        await refused(lambda: r.xadd(KEYS.events, {"container_id": "1"}))
        await refused(lambda: r.xadd("other:intake", {"container_id": "1"}))
        # No scripts, no admin, no keyspace walks, no pub/sub.
        await refused(lambda: r.eval("return 1", 0))
        await refused(lambda: r.evalsha("0" * 40, 0))
        await refused(lambda: r.script_load("return 1"))
        await refused(lambda: command(r, "FUNCTION", "LIST"))
        await refused(lambda: r.flushall())
        await refused(lambda: r.flushdb())
        await refused(lambda: r.config_set("maxmemory", "1"))
        await refused(lambda: r.keys("*"))
        await refused(lambda: r.scan())
        await refused(lambda: command(r, "SAVE"))
        await refused(lambda: command(r, "SWAPDB", "0", "1"))
        await refused(lambda: r.client_list())
        await refused(lambda: command(r, "CLIENT", "KILL", "TYPE", "normal"))
        await refused(lambda: r.publish("ch", "x"))
        await refused(lambda: command(r, "ACL", "WHOAMI"))
    # What it could do, it did; nothing else changed.
    assert admin.xlen(KEYS.intake) == 4
    assert admin.zcard(KEYS.queue) == 1 and admin.exists(f"arq:job:{PREFIX}:check:1:a")


async def test_the_reader_reads_results_and_events_and_writes_nothing(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    admin.hset(KEYS.result("9810"), mapping={"container_id": "9810", "status": "FINISHED"})
    admin.hset(KEYS.result("9810"), mapping={"final": "1", "checks": "1", "generation": "g"})
    admin.xadd(KEYS.events, {"container_id": "9810", "status": "FINISHED"})
    async with as_user(acl_server, "reader") as r:
        client = PollerClient(r)
        got = await client.get("9810")
        assert got is not None and got.status == "FINISHED"
        assert [x.status if x else None for x in await client.get_many(["9810", "1"])] == [
            "FINISHED",
            None,
        ]
        waited = await client.wait("9810", timeout=1)
        assert waited is not None and waited.final
        assert len(await r.xrange(KEYS.events)) == 1
        await refused(lambda: r.hset(KEYS.result("9810"), "status", "ERROR"))
        await refused(lambda: r.delete(KEYS.result("9810")))
        await refused(lambda: r.xadd(KEYS.intake, {"container_id": "1"}))
        await refused(lambda: r.xadd(KEYS.events, {"container_id": "1"}))
        await refused(lambda: r.xrange(KEYS.intake))
        await refused(lambda: r.xrange(KEYS.webhook_dead_letters))  # URLs and bodies
        await refused(lambda: r.get(KEYS.quota("1")))
        await refused(lambda: r.flushall())
        await refused(lambda: r.eval("return 1", 0))
    assert admin.hgetall(KEYS.result("9810"))[b"status"] == b"FINISHED"  # type: ignore[index]


async def test_the_enqueuer_starts_polls_and_nothing_more(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    async with as_user(acl_server, "enqueuer") as r:
        async with PollerClient(r) as client:
            outs = await client.enqueue_many(["9820", "9821"], account="42")
            assert [o.outcome for o in outs] == ["enqueued", "enqueued"]
            assert (await client.enqueue("9820")).outcome == "duplicate"
            assert (await client.get("9820")) is not None
        await refused(lambda: r.xrange(KEYS.intake))
        await refused(lambda: r.xadd(KEYS.events, {"x": "1"}))
        await refused(lambda: r.get(f"arq:retry:{PREFIX}:check:9820:x"))
        await refused(lambda: r.hset(KEYS.account("42"), "throttled_until", "0"))
        await refused(lambda: r.flushall())
        await refused(lambda: r.keys("*"))
        await refused(lambda: r.set("other:key", "1"))
    assert admin.zcard(KEYS.queue) == 2


# ----- the whole worker under its own user -------------------------------------------------


async def test_the_worker_runs_fully_under_its_own_user(
    acl_server: RedisServer,
    admin: redis_sync.Redis,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        url(acl_server, "worker"),
        sim.base_url,
        key_prefix=PREFIX,
        poll_max_seconds=3.0,
        publish_grace_seconds=0.1,
        webhook_secret="whsec-acl-0123456789",
        webhook_allowed_hosts="127.0.0.1",
        webhook_backoff_seconds=0.1,
        webhook_max_attempts=2,
        metrics_port=free_port(),
        threads_user_id="777",
    )
    steps = {
        "9830": ["IN_PROGRESS", "FINISHED"],
        "9831": ["throttle", "FINISHED"],
        "9832": ["notfound", "notfound"],
        "9833": ["FINISHED"],  # auto-published
        "9834": ["IN_PROGRESS", "EXPIRED"],  # from the producer, through the intake
    }
    for cid, script in steps.items():
        sim.state.set_script(cid, script)
    sim.state.set_quota("777", quota_usage=1)
    opts: dict[str, Any] = {
        "window_seconds": 3.0,
        "webhook_policy": WebhookPolicy.parse("127.0.0.1", signing=True),
    }
    async with webhook_receiver([200]) as ok, webhook_receiver([500]) as failing:
        async with (
            as_user(acl_server, "enqueuer") as r,
            PollerClient(r, **opts) as client,
        ):
            await client.enqueue("9830", webhook_url=ok.url)
            await client.enqueue("9831", webhook_url=failing.url)
            await client.enqueue_many(["9832"])
            await client.enqueue("9833", account="777", publish=True)
        async with as_user(acl_server, "producer") as r:
            await PollerClient(r, **opts).submit_many(["9834"], webhook_url=ok.url)
            await r.xadd(KEYS.intake, {"container_id": "not-an-id"})
        async with running_worker(settings) as worker:
            async with as_user(acl_server, "reader") as r:
                reader = PollerClient(r)

                async def done() -> bool:
                    results = await reader.get_many(list(steps))
                    hooks = {c: x.webhook_status for c, x in zip(steps, results, strict=True) if x}
                    return (
                        all(x is not None and x.final for x in results)
                        and hooks.get("9830") == "delivered"
                        and hooks.get("9831") == "dead"
                        and hooks.get("9834") == "delivered"
                    )

                await wait_until(done, timeout=30)
                results = dict(zip(steps, await reader.get_many(list(steps)), strict=True))
            async with as_user(acl_server, "worker") as r:
                health = await health_check(r, KEYS, host=None)
            assert health.healthy, health.message
            env = dict(project_env, REDIS_URL=url(acl_server, "worker"), KEY_PREFIX=PREFIX)
            code, _, err = await run_cli("health", "--any", env=env)
            assert code == 0, err
            assert worker.runner is not None
    assert {c: r.status for c, r in results.items() if r} == {
        "9830": "FINISHED",
        "9831": "FINISHED",
        "9832": "FAILED",
        "9833": "PUBLISHED",
        "9834": "EXPIRED",
    }
    assert results["9831"] is not None and results["9831"].throttled == 1
    assert admin.xlen(KEYS.webhook_dead_letters) == 1
    assert admin.xlen(KEYS.dead_letters) == 1
    # Every command of every loop and script, and the clean stop, went through.
    for user in ("worker", "enqueuer", "producer", "reader"):
        assert denials(admin, user) == [], (user, denials(admin, user))
    assert "NOPERM" not in caplog.text
    # The worker is the deployment's: another prefix's keys are not its own.
    async with as_user(acl_server, "worker") as r:
        await refused(lambda: r.get("other-deployment:config"))
        await refused(lambda: r.flushall())
        await refused(lambda: r.keys("*"))
        await refused(lambda: r.config_get("*"))
        await refused(lambda: command(r, "MONITOR"))


async def test_the_cli_under_least_privilege_users(
    acl_server: RedisServer, admin: redis_sync.Redis, project_env: dict[str, str]
) -> None:
    env = dict(project_env, REDIS_URL=url(acl_server, "producer"), KEY_PREFIX=PREFIX)
    code, out, err = await run_cli("enqueue", "--intake", "--json", "9840", "9841", env=env)
    assert code == 0, err
    assert [json.loads(line)["outcome"] for line in out.splitlines()] == ["submitted"] * 2
    assert admin.xlen(KEYS.intake) == 2
    # The script path is not the producer's: a clear refusal, not a traceback.
    code, _, err = await run_cli("enqueue", "9842", env=env)
    assert code == 4 and "Redis refused this user" in err and "--intake" in err, err
    assert "Traceback" not in err and PASSWORDS["producer"] not in err
    code, _, err = await run_cli("status", "9840", env=env)
    assert code == 4 and "no permissions" in err
    reader_env = dict(env, REDIS_URL=url(acl_server, "reader"))
    admin.hset(KEYS.result("9840"), mapping={"container_id": "9840", "status": "QUEUED"})
    code, out, err = await run_cli("status", "9840", "--json", env=reader_env)
    assert code == 0 and json.loads(out)["status"] == "QUEUED", err
    bad_env = dict(env, REDIS_URL=url(acl_server, "reader", "wrong-password-123"))
    code, _, err = await run_cli("status", "9840", env=bad_env)
    assert code == 4 and "refused the credentials" in err and "wrong-password-123" not in err


def test_the_printed_recipe_is_what_the_tests_use(admin: redis_sync.Redis) -> None:
    """``threads-poller acl`` prints the rules these tests load (the README shows them)."""
    from worker.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["acl", "producer", "--user", "p", "--prefix", PREFIX]) == 0
    assert buffer.getvalue().strip() == acl_setuser("p", ["producer"], PREFIX)


async def test_the_redis_password_reaches_no_log_message_health_or_metrics(
    acl_server: RedisServer,
    admin: redis_sync.Redis,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A worker process with its password in REDIS_URL, at DEBUG, whose connections are cut
    while it runs; then every door: its log, /metrics, health, status, Redis itself, and the
    errors of a wrong password and of an unreachable Redis."""
    password = PASSWORDS["worker"]
    metrics_port = free_port()
    env = dict(
        project_env,
        REDIS_URL=url(acl_server, "worker"),
        KEY_PREFIX=PREFIX,
        THREADS_API_BASE_URL=sim.base_url,
        THREADS_ACCESS_TOKEN="EAAtoken-for-the-acl-run-0123",
        POLL_INTERVAL_SECONDS="0.2",
        POLL_MAX_SECONDS="5",
        HTTP_TIMEOUT_SECONDS="1",
        JOB_TIMEOUT_SECONDS="5",
        LOG_LEVEL="DEBUG",
        METRICS_PORT=str(metrics_port),
    )
    sim.state.set_script("9850", ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"])
    admin.xadd(KEYS.intake, {"container_id": "9850"})
    log_path = tmp_path / "worker.log"
    proc = await start_worker(env, log_path)
    doors: dict[str, bytes | str] = {}
    try:

        async def final() -> bool:
            raw = admin.hgetall(KEYS.result("9850"))
            return raw.get(b"final") == b"1"  # type: ignore[union-attr]

        await wait_until(lambda: admin.exists(KEYS.workers), timeout=15)
        for _ in range(3):  # connection errors, reconnects: what a log would mention
            command(admin, "CLIENT", "KILL", "USER", "worker")
            await asyncio.sleep(0.3)
        await wait_until(final, timeout=20)
        doors |= await http_doors({"metrics": f"http://127.0.0.1:{metrics_port}/metrics"})
        code, out, err = await run_cli("health", "--any", env=env)
        assert code == 0, err
        doors["health"] = out + err
        code, out, err = await run_cli("status", "9850", "--json", env=env)
        doors["status"] = out + err
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    doors["worker log"] = log_path.read_text()
    wrong = dict(env, REDIS_URL=url(acl_server, "worker", password + "-wrong"))
    code, out, err = await run_cli("worker", env=wrong)
    assert code == 1 and "refused the credentials" in err, err  # at once, not after retries
    doors["worker, wrong password"] = out + err
    gone = dict(env, REDIS_URL=f"redis://worker:{password}@127.0.0.1:{free_port()}/0")
    code, out, err = await run_cli("status", "9850", env=gone)
    assert code == 4 and "worker:***@" in err
    doors["status, Redis unreachable"] = out + err
    code, out, err = await run_cli("health", "--any", env=gone)
    doors["health, Redis unreachable"] = out + err
    async with as_user(acl_server, "admin") as r:
        doors["redis"] = await dump_redis(r)
    assert "worker started" in str(doors["worker log"])
    assert_no_leaks(doors, [password, password + "-wrong"])
    # (The wrong password's attempts are there as reason "auth"; nothing else is.)
    assert [d for d in denials(admin, "worker") if d.get("reason") != "auth"] == []
