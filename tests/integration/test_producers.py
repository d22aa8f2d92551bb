"""Issue 21, item 2: producers scoped. One test per row of the README's trust table.

A ``redis-server`` of its own with the users ``threads-poller acl`` prints (a producer per
stream, reader, enqueuer, worker) and the default user off; ``PRODUCERS`` names three:

- ``a``: account 1111, may force, publish and give a webhook;
- ``b``: account 2222, nothing else;
- ``c``: accounts 2222 and 3333, may force, publish and give a webhook (but not 1111).

The attack of the issue: an intake entry ``container_id <a's FINISHED container> account <any>
force 1 publish 1 webhook_url <mine>`` restarted the finished poll with the entry's flags (and
its receiver got the signed result). Now ``b`` is refused at the door (its scope), and ``c``,
which may force, is refused inside enqueue.lua (the poll is ``a``'s, of an account ``c`` may not
use); ``a``'s poll is left as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from bench.harness import RedisServer, start_redis, stop_redis
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.settings import make_settings
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.integration.test_acl import command, denials, refused
from tests.web_helpers import RO_KEY, RW_KEY, running_api
from worker import PollerClient
from worker.core.errors import ScopeError
from worker.store.acl import acl_setuser
from worker.store.keys import Keys

PREFIX = "threads-poller"
KEYS = Keys(PREFIX)
PRODUCERS = {
    "a": {"accounts": ["1111"], "force": True, "publish": True, "webhook": True},
    "b": {"accounts": ["2222"]},
    "c": {"accounts": ["2222", "3333"], "force": True, "publish": True, "webhook": True},
}
HOOK = "http://127.0.0.1:9/hook"  # never called: every test here refuses it or ends first
USERS: dict[str, tuple[list[str], str | None]] = {
    "producer": (["producer"], None),  # the default stream
    "producer-a": (["producer"], "a"),
    "producer-b": (["producer"], "b"),
    "producer-c": (["producer"], "c"),
    "reader": (["reader"], None),
    "enqueuer": (["enqueuer"], None),
    "worker": (["worker"], None),
}
KEY_A = "producer-a-key-0123456789"
KEY_B = "producer-b-key-0123456789"
KEY_C = "producer-c-key-0123456789"


def password(user: str) -> str:
    return f"{user}-pw-0123456789"


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-producers"))
    admin = server.client()
    command(admin, "ACL", "SETUSER", "admin", "reset", "on", f">{password('admin')}", "~*", "&*")
    command(admin, "ACL", "SETUSER", "admin", "+@all")
    for user, (roles, producer) in USERS.items():
        line = acl_setuser(user, roles, PREFIX, password(user), producer=producer)
        command(admin, *line.split())
    command(admin, "ACL", "SETUSER", "default", "off")
    admin.close()
    yield server
    stop_redis(server)


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{password(user)}@127.0.0.1:{server.port}/0"


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(url(acl_server, "admin"), decode_responses=True)
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


def scoped(server: RedisServer, sim: RunningSimulator, user: str = "worker", **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "key_prefix": PREFIX,
        "producers": json.dumps(PRODUCERS),
        "poll_max_seconds": 3.0,
        "webhook_secret": "whsec-producers-0123456789",
        "webhook_allowed_hosts": "127.0.0.1",
    }
    values.update(kw)
    return make_settings(url(server, user), sim.base_url, **values)


def dead(admin: redis_sync.Redis) -> list[dict[str, Any]]:
    """The intake dead letters, oldest first, with their fields decoded."""
    rows: list[tuple[str, dict[str, str]]] = admin.xrange(KEYS.dead_letters)  # type: ignore[assignment]
    return [{**f, "fields": json.loads(f["fields"])} for _, f in rows]


def result(admin: redis_sync.Redis, cid: str) -> dict[str, str]:
    return admin.hgetall(KEYS.result(cid))  # type: ignore[return-value]


async def finished(admin: redis_sync.Redis, cid: str) -> None:
    await wait_until(lambda: result(admin, cid).get("final") == "1", timeout=15)


# ----- a producer, per stream ------------------------------------------------------------------


async def test_row_producer_of_the_default_stream(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    """``producer`` writes ``{prefix}:intake`` only: the default producer's (allowed all)."""
    sim.state.set_script("7001", ["FINISHED"])
    async with as_user(acl_server, "producer") as r:
        await r.xadd(KEYS.intake, {"container_id": "7001", "account": "9999", "force": "1"})
        for name in ("a", "b"):
            await refused(lambda name=name: r.xadd(KEYS.intake_of(name), {"container_id": "1"}))  # type: ignore[misc]
    async with running_worker(scoped(acl_server, sim)):
        await finished(admin, "7001")
    got = result(admin, "7001")
    assert got["status"] == "FINISHED" and got["account"] == "9999"
    assert "producer" not in got  # the default producer's, as before scopes
    assert dead(admin) == []


async def test_row_named_producer_gets_its_own_stream_and_scope(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    """``producer --producer b`` writes ``{prefix}:intake:b`` only, and the workers give its
    entries b's scope: an account outside its list, force, publish or a webhook is refused
    with the reason; what it may ask for becomes b's poll."""
    sim.state.set_script("7011", ["FINISHED"])
    entries = [
        {"container_id": "7010", "account": "1111"},  # a's account
        {"container_id": "7010"},  # no account: the deployment's own token
        {"container_id": "7010", "account": "2222", "force": "1"},
        {"container_id": "7010", "account": "2222", "publish": "1"},
        {"container_id": "7010", "account": "2222", "webhook_url": HOOK},
        {"container_id": "7011", "account": "2222"},
    ]
    async with as_user(acl_server, "producer-b") as r:
        for fields in entries:
            await r.xadd(KEYS.intake_of("b"), fields)  # type: ignore[arg-type]
        await refused(lambda: r.xadd(KEYS.intake, {"container_id": "1"}))
        await refused(lambda: r.xadd(KEYS.intake_of("a"), {"container_id": "1"}))
        await refused(lambda: r.xrange(KEYS.intake_of("b")))
    async with running_worker(scoped(acl_server, sim)):
        await finished(admin, "7011")
        await wait_until(lambda: len(dead(admin)) == 5)
    letters = dead(admin)
    assert [d["reason"] for d in letters] == [
        "producer 'b' may not use: account 1111",
        "producer 'b' may not use: no account (the default token)",
        "producer 'b' may not use: force",
        "producer 'b' may not use: publish",
        "producer 'b' may not use: webhook_url",
    ]
    # Each says whose it was: a replay goes back to b's stream, under b's scope.
    assert {d["producer"] for d in letters} == {"b"}
    assert not admin.exists(KEYS.result("7010"))
    assert result(admin, "7011")["producer"] == "b"
    assert denials(admin, "worker") == [] and denials(admin, "producer-b") != []


async def test_the_attack_b_and_c_cannot_restart_a_finished_container(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    sim.state.set_script("7020", ["FINISHED"])
    settings = scoped(acl_server, sim)
    async with running_worker(settings):
        async with as_user(acl_server, "producer-a") as r:
            await r.xadd(KEYS.intake_of("a"), {"container_id": "7020", "account": "1111"})
        await finished(admin, "7020")
        before = result(admin, "7020")
        assert before["producer"] == "a" and before["status"] == "FINISHED"
        events = admin.xlen(KEYS.events)
        attack: dict[Any, Any] = {
            "container_id": "7020",
            "force": "1",
            "publish": "1",
            "webhook_url": HOOK,
        }
        async with as_user(acl_server, "producer-b") as r:
            await r.xadd(KEYS.intake_of("b"), {**attack, "account": "1111"})
            await r.xadd(KEYS.intake_of("b"), {**attack, "account": "2222"})
        # c may force, publish and give a webhook: the door lets it by, enqueue.lua does not.
        async with as_user(acl_server, "producer-c") as r:
            await r.xadd(KEYS.intake_of("c"), {**attack, "account": "2222"})
        await wait_until(lambda: len(dead(admin)) == 3)
    letters = dead(admin)
    assert letters[0]["reason"] == (
        "producer 'b' may not use: account 1111, force, publish, webhook_url"
    )
    assert letters[1]["reason"] == "producer 'b' may not use: force, publish, webhook_url"
    assert letters[2]["reason"].startswith(
        "refused: producer c may not change a poll that producer a started"
    ), letters[2]
    assert "account 1111" in letters[2]["reason"]
    # a's poll is as it was: same generation, no webhook, no publish, no new event.
    assert result(admin, "7020") == before
    assert admin.xlen(KEYS.events) == events
    # The same through the trusted door (the Python client as c): refused by enqueue.lua.
    async with as_user(acl_server, "enqueuer") as r:
        client = PollerClient.from_settings(scoped(acl_server, sim, "enqueuer"), r, producer="c")
        with pytest.raises(ScopeError, match="producer a started") as info:
            await client.enqueue("7020", account="2222", force=True, publish=True)
        assert [o.outcome for o in info.value.outcomes] == ["refused"]  # type: ignore[attr-defined]
        # a itself may restart its own.
        mine = await client.enqueue("7020", account="1111", force=True, producer="a")
        assert mine.outcome == "restarted"
    assert result(admin, "7020")["generation"] != before["generation"]
    assert result(admin, "7020")["producer"] == "a"


# ----- reader, enqueuer, worker ----------------------------------------------------------------


async def test_row_reader_reads_results_and_feeds_no_stream(
    acl_server: RedisServer, admin: redis_sync.Redis
) -> None:
    admin.hset(KEYS.result("7030"), mapping={"container_id": "7030", "status": "QUEUED"})
    admin.hset(KEYS.result("7030"), mapping={"final": "0", "producer": "a"})
    async with as_user(acl_server, "reader") as r:
        assert await r.hget(KEYS.result("7030"), "producer") == b"a"  # type: ignore[misc]
        for name in ("default", "a", "b"):
            await refused(lambda name=name: r.xadd(KEYS.intake_of(name), {"container_id": "1"}))  # type: ignore[misc]
        await refused(lambda: r.xrange(KEYS.dead_letters))


async def test_row_enqueuer_applies_the_scope_at_the_door(
    acl_server: RedisServer,
    admin: redis_sync.Redis,
    sim: RunningSimulator,
    project_env: dict[str, str],
) -> None:
    """The Python client and the CLI (trusted: they write the queue) take a producer: its
    scope is checked before anything is written, and the polls are its own."""
    async with as_user(acl_server, "enqueuer") as r:
        client = PollerClient.from_settings(scoped(acl_server, sim, "enqueuer"), r, producer="b")
        for kw, named in (
            ({"account": "1111"}, "account 1111"),
            ({}, "no account"),
            ({"account": "2222", "force": True}, "force"),
            ({"account": "2222", "publish": True}, "publish"),
            ({"account": "2222", "webhook_url": HOOK}, "webhook_url"),
        ):
            with pytest.raises(ScopeError, match=named) as info:
                await client.enqueue_many(["7040", "7041"], **kw)
            assert info.value.producer == "b" and info.value.outcomes == ()
        assert admin.zcard(KEYS.queue) == 0  # nothing written
        assert (await client.enqueue("7040", account="2222")).outcome == "enqueued"
        with pytest.raises(ScopeError, match="no producer named 'zz'"):
            await client.enqueue("7041", account="2222", producer="zz")
    assert result(admin, "7040")["producer"] == "b"
    env = dict(
        project_env,
        REDIS_URL=url(acl_server, "enqueuer"),
        KEY_PREFIX=PREFIX,
        PRODUCERS=json.dumps(PRODUCERS),
    )
    code, out, err = await run_cli(
        "enqueue", "--producer", "b", "--account", "1111", "7042", env=env
    )
    assert code == 2 and "producer 'b' may not use: account 1111" in err, (out, err)
    code, _, err = await run_cli(
        "enqueue", "--producer", "b", "--publish", "--account", "2222", "7042", env=env
    )
    assert code == 2 and "publish" in err, err
    code, _, err = await run_cli("enqueue", "--producer", "nosuch", "7042", env=env)
    assert code == 2 and "no producer named 'nosuch'" in err, err
    assert not admin.exists(KEYS.result("7042"))
    code, out, err = await run_cli(
        "enqueue", "--producer", "b", "--account", "2222", "7042", env=env
    )
    assert code == 0, err
    assert result(admin, "7042")["producer"] == "b"
    # A producer-only user with the CLI: its own stream.
    penv = dict(env, REDIS_URL=url(acl_server, "producer-c"))
    code, out, err = await run_cli(
        "enqueue", "--intake", "--producer", "c", "--account", "3333", "7043", env=penv
    )
    assert code == 0, err
    code, out, err = await run_cli(
        "enqueue", "--intake", "--producer", "c", "--account", "1111", "7043", env=penv
    )
    assert code == 2 and "account 1111" in err, err


async def test_row_worker_consumes_every_stream_under_its_own_user(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    for cid in ("7050", "7051", "7052", "7053"):
        sim.state.set_script(cid, ["FINISHED"])
    for user, stream, cid, account in (
        ("producer", KEYS.intake, "7050", "5"),
        ("producer-a", KEYS.intake_of("a"), "7051", "1111"),
        ("producer-b", KEYS.intake_of("b"), "7052", "2222"),
        ("producer-c", KEYS.intake_of("c"), "7053", "3333"),
    ):
        async with as_user(acl_server, user) as r:
            await r.xadd(stream, {"container_id": cid, "account": account})
    async with running_worker(scoped(acl_server, sim)):
        for cid in ("7050", "7051", "7052", "7053"):
            await finished(admin, cid)
    owners = {cid: result(admin, cid).get("producer") for cid in ("7050", "7051", "7052", "7053")}
    assert owners == {"7050": None, "7051": "a", "7052": "b", "7053": "c"}
    assert denials(admin, "worker") == []
    for stream in (KEYS.intake, *(KEYS.intake_of(n) for n in "abc")):
        assert admin.xlen(stream) == 0


# ----- HTTP ------------------------------------------------------------------------------------


async def test_row_http_read_only_key_enqueues_nothing(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    async with running_api(scoped(acl_server, sim), sample=False) as api:
        got = await api.post("/v1/containers", key=RO_KEY, json={"container_id": "7060"})
        assert got.status == 403 and got.code() == "forbidden"
    assert not admin.exists(KEYS.result("7060"))


async def test_row_http_key_scoped_to_a_producer(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    """``API_KEYS`` ``b=KEY``: b's scope on POST /v1/containers (403 ``out_of_scope`` naming
    what is not allowed), reads, and no operator action; a plain key stays the operator's."""
    write = (RW_KEY, f"a={KEY_A}", f"b={KEY_B}", f"c={KEY_C}")
    async with running_api(scoped(acl_server, sim), write=write, sample=False) as api:
        for body, named in (
            ({"account": "1111"}, ["account 1111"]),
            ({"account": "2222", "force": True, "publish": True}, ["force", "publish"]),
            ({"account": "2222", "webhook_url": HOOK}, ["webhook_url"]),
        ):
            got = await api.post("/v1/containers", key=KEY_B, json={"container_id": "7070", **body})
            assert got.status == 403 and got.code() == "out_of_scope", got.text
            assert got.body["error"]["details"]["refused"] == named
            assert "producer 'b' may not use" in got.body["error"]["message"]
        assert not admin.exists(KEYS.result("7070"))
        got = await api.post(
            "/v1/containers", key=KEY_B, json={"container_id": "7070", "account": "2222"}
        )
        assert got.status == 202 and got.body["outcomes"][0]["outcome"] == "enqueued"
        assert result(admin, "7070")["producer"] == "b"
        assert (await api.get("/v1/containers/7070", key=KEY_B)).status == 202  # reads
        # No operator action with a producer's key.
        got = await api.post("/v1/containers/7070/cancel", key=KEY_B)
        assert got.status == 403 and got.code() == "forbidden" and "producer b" in got.text
        got = await api.call("DELETE", "/v1/dead-letters/intake/1-0", key=KEY_B)
        assert got.status == 403 and got.code() == "forbidden"
        # The attack over HTTP: a's finished container, c's force, publish and webhook.
        got = await api.post(
            "/v1/containers", key=KEY_A, json={"container_id": "7071", "account": "1111"}
        )
        assert got.status == 202
        admin.hset(KEYS.result("7071"), mapping={"final": "1", "status": "FINISHED"})
        before = result(admin, "7071")
        attack = {"container_id": "7071", "account": "2222", "force": True, "publish": True}
        got = await api.post("/v1/containers", key=KEY_C, json={**attack, "webhook_url": HOOK})
        assert got.status == 403 and got.code() == "out_of_scope", got.text
        assert "producer a started" in got.body["error"]["message"]
        assert got.body["error"]["details"]["outcomes"][0]["outcome"] == "refused"
        assert result(admin, "7071") == before
        # The plain key is the operator's: it cancels (b's poll too).
        got = await api.post("/v1/containers/7070/cancel", key=RW_KEY)
        assert got.status == 200, got.text


async def test_row_no_key_loopback_is_the_default_producer(
    acl_server: RedisServer, admin: redis_sync.Redis, sim: RunningSimulator
) -> None:
    async with running_api(scoped(acl_server, sim), write=(), read=(), sample=False) as api:
        origin = {"Origin": api.base}
        body = {"container_id": "7080", "account": "9999", "force": True, "publish": True}
        got = await api.post("/v1/containers", key=None, json=body, headers=origin)
        assert got.status == 202, got.text
    assert "producer" not in result(admin, "7080")  # the default producer's
