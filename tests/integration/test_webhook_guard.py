"""Issue 15, item 1: the SSRF guard at every door, against real sockets.

A producer picks the URL a worker POSTs to from inside the deployment. By default a URL whose
host is, or resolves to, a loopback, private, link-local, multicast or otherwise non-public
address is refused at enqueue (Python client, CLI exit 2, intake dead letter) and again at
delivery against the address the connection is made to. The receivers here listen on 127.0.0.1,
so every test that wants a delivery allows it explicitly; the ones that do not prove the default.
Pure rules: tests/unit/test_targets.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr
from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.env import worker_env
from tests.helpers.receivers import serving_app
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from tests.webhook_verify import verifies
from worker import InvalidIdError, PollerClient, get_result
from worker.client.producer import store_for
from worker.core.targets import IPAddress
from worker.store.keys import Keys
from worker.store.results import EnqueueRequest

SECRET = "whsec-guard-0123456789"

# What the SSRF guard must refuse by default, each with what the refusal says.
REFUSED = [
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://[::1]:9/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.5/hook", "private"),
    ("http://192.168.0.1/hook", "private"),
    ("http://localhost:9/hook", "localhost resolves to a loopback"),  # through a name
    ("http://[::ffff:127.0.0.1]:9/hook", "loopback"),  # IPv4-mapped IPv6
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://2130706433/hook", "non-canonical IPv4"),  # decimal 127.0.0.1
    ("http://0177.0.0.1/hook", "non-canonical IPv4"),  # octal
    ("http://0x7f.1/hook", "non-canonical IPv4"),  # hex, short
    ("http://0.0.0.0:9/hook", "unspecified"),
    ("https://...", "not a valid host name"),  # the README's placeholder
]


def guarded(settings: Settings, **more: object) -> Settings:
    """The test settings with a secret and the default policy (nothing allowed)."""
    update: dict[str, object] = {
        "webhook_secret": SecretStr(SECRET),
        "webhook_backoff_seconds": 0.1,
        "webhook_max_attempts": 2,
        "webhook_timeout_seconds": 2.0,
        "webhook_allowed_hosts": "",
        "webhook_allow_private_addresses": False,
    }
    update.update(more)
    return settings.model_copy(update=update)


@dataclass
class Receiver:
    url: str = ""
    got: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    inner: int = 0  # requests that reached the redirect's target


@contextlib.asynccontextmanager
async def receiver(
    host: str = "127.0.0.1", *, redirect: bool = False, endless: bool = False
) -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.StreamResponse:
        rec.got.append((await request.read(), dict(request.headers)))
        if redirect:
            raise web.HTTPTemporaryRedirect(location=rec.url.removesuffix("/hook") + "/inner")
        if endless:
            # A receiver that never stops answering: the worker reads a capped amount.
            resp = web.StreamResponse(status=200)
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError, RuntimeError):
                while True:
                    await resp.write(b"x" * 65536)
            return resp
        return web.Response(status=200, text="ok")

    async def inner(request: web.Request) -> web.Response:
        rec.inner += 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/inner", inner)
    async with serving_app(app, host) as base:
        rec.url = f"{base}/hook"
        yield rec


class MapResolver(AbstractResolver):
    """The worker's DNS, from a table: what a name resolves to at delivery time."""

    def __init__(self, answers: Mapping[str, Sequence[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.answers:
            raise OSError(f"{host} does not resolve")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        return None


class Table:
    """The producer's DNS, from a table (PollerClient's ``webhook_resolve``)."""

    def __init__(self, answers: Mapping[str, Sequence[str]]) -> None:
        self.answers = answers

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        return [ip_address(a) for a in self.answers.get(host, ())]


async def webhook_state(redis: Redis, settings: Settings, cid: str) -> str | None:
    r = await get_result(redis, cid, settings=settings)
    return r.webhook_status if r is not None else None


async def dead_letters(redis: Redis, keys: Keys) -> dict[str, dict[str, str]]:
    return {
        f[b"container_id"].decode(): {k.decode(): v.decode() for k, v in f.items()}
        for _, f in await redis.xrange(keys.webhook_dead_letters)
    }


# ----- at enqueue: the Python client -------------------------------------------------------


@pytest.mark.parametrize(("url", "why"), REFUSED)
async def test_the_client_refuses_non_public_targets_and_writes_nothing(
    redis: Redis, settings: Settings, url: str, why: str
) -> None:
    async with PollerClient.from_settings(guarded(settings), redis) as client:
        with pytest.raises(InvalidIdError, match="webhook url") as info:
            await client.enqueue("9601", webhook_url=url)
    assert why in str(info.value)
    assert await redis.dbsize() == 0


async def test_the_client_refuses_a_name_that_resolves_to_a_non_public_address(
    redis: Redis, settings: Settings
) -> None:
    dns = Table(
        {
            "meta.example.com": ["169.254.169.254"],
            "inside.example.com": ["10.1.2.3"],
            "mixed.example.com": ["93.184.216.34", "::1"],
            "public.example.com": ["93.184.216.34"],
        }
    )
    async with PollerClient.from_settings(guarded(settings), redis, webhook_resolve=dns) as client:
        for host, kind in [("meta", "link-local"), ("inside", "private"), ("mixed", "loopback")]:
            with pytest.raises(InvalidIdError, match=f"{host}.example.com resolves to an? {kind}"):
                await client.enqueue("9602", webhook_url=f"https://{host}.example.com/h")
        assert await redis.exists(Keys(settings.key_prefix).result("9602")) == 0
        out = await client.enqueue("9602", webhook_url="https://public.example.com/h")
    assert out.outcome == "enqueued"
    # The private one is fine once the deployment says so.
    allowed = guarded(settings, webhook_allow_private_addresses=True)
    async with PollerClient.from_settings(allowed, redis, webhook_resolve=dns) as client:
        assert (await client.enqueue("9603", webhook_url="https://inside.example.com/h")).outcome
        with pytest.raises(InvalidIdError, match="link-local"):
            await client.enqueue("9604", webhook_url="https://meta.example.com/h")


async def test_a_producer_without_the_secret_follows_the_workers(
    redis: Redis, settings: Settings, keys: Keys
) -> None:
    """The producer need not hold WEBHOOK_SECRET: the workers publish whether they can sign."""
    producer = settings.model_copy(update={"webhook_secret": None})
    url = "https://hooks.example.com/threads"  # does not resolve offline: left to the delivery
    store = store_for(redis, settings)
    await store.publish_config(webhook_signing=False)
    async with PollerClient.from_settings(producer, redis) as client:
        with pytest.raises(InvalidIdError, match="the workers have no WEBHOOK_SECRET"):
            await client.enqueue("9605", webhook_url=url)
        assert await redis.exists(keys.result("9605")) == 0
        await client.enqueue("9605")  # without a webhook: fine
        await store.publish_config(webhook_signing=True)
        assert (await client.enqueue("9606", webhook_url=url)).outcome == "enqueued"


# ----- at enqueue: the CLI -----------------------------------------------------------------


async def test_the_cli_refuses_with_exit_2_and_writes_nothing(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings, WEBHOOK_SECRET=SECRET)
    for url, why in [REFUSED[2], REFUSED[5], REFUSED[6], REFUSED[8], REFUSED[-1]]:
        code, out, err = await run_cli("enqueue", "9610", "--webhook-url", url, env=env)
        assert code == 2 and out == "", (url, err)
        assert "refused, nothing enqueued" in err and why in err, (url, err)
    assert await redis.dbsize() == 0
    # Allowed explicitly: accepted.
    env["WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
    code, out, err = await run_cli(
        "enqueue", "9610", "--webhook-url", "http://127.0.0.1:9/hook", env=env
    )
    assert code == 0 and "enqueued" in out, err
    env["WEBHOOK_ALLOWED_HOSTS"] = "10.0.0.0/33"
    code, _, err = await run_cli("enqueue", "9611", env=env)
    assert code == 2 and "invalid setting WEBHOOK_ALLOWED_HOSTS" in err


async def test_the_cli_refuses_a_webhook_the_workers_could_not_sign(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings)  # no WEBHOOK_SECRET here
    args = ("enqueue", "9612", "--webhook-url", "https://hooks.example.com/x")
    # A new deployment, no worker started yet: nobody can vouch for a signature, so no.
    code, out, err = await run_cli(*args, env=env)
    assert code == 2 and out == "" and "no worker of this deployment has said yet" in err, err
    assert await redis.exists(Keys(settings.key_prefix).result("9612")) == 0
    await store_for(redis, settings).publish_config(webhook_signing=False)
    code, _, err = await run_cli(*args, env=env)
    assert code == 2 and "WEBHOOK_SECRET" in err, err
    assert await redis.exists(Keys(settings.key_prefix).result("9612")) == 0
    await store_for(redis, settings).publish_config(webhook_signing=True)
    code, out, err = await run_cli(*args, env=env)
    assert code == 0 and "enqueued" in out, err


async def test_the_worker_refuses_a_default_webhook_url_it_may_not_call(
    settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(
        project_env,
        settings,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_URL="http://169.254.169.254/latest/meta-data/",
    )
    code, _, err = await run_cli("worker", env=env)
    assert code == 2 and "invalid setting WEBHOOK_URL" in err and "link-local" in err


# ----- at enqueue: the intake stream -------------------------------------------------------


async def test_the_intake_dead_letters_refused_targets_with_the_reason(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = guarded(settings)
    entries = {f"96{20 + i}": url for i, (url, _) in enumerate(REFUSED)}
    entries["9640"] = "http://inside.example.com/hook"  # resolves to 10.x, by the worker's DNS
    whys = dict(zip(entries, [why for _, why in REFUSED] + ["private"], strict=True))
    sim.state.set_script("9641", ["FINISHED"])
    for cid, url in entries.items():
        await redis.xadd(keys.intake, {"container_id": cid, "webhook_url": url})
    await redis.xadd(keys.intake, {"container_id": "9641"})
    dns = Table({"inside.example.com": ["10.9.8.7"], "localhost": ["127.0.0.1"]})
    async with running_worker(settings, webhook_resolve=dns):

        async def settled() -> bool:
            r = await get_result(redis, "9641", settings=settings)
            dead = await redis.xlen(keys.dead_letters)
            return r is not None and r.final and dead == len(entries)

        await wait_until(settled, timeout=15)
    dead = {
        json.loads(f[b"fields"])["container_id"]: f[b"reason"].decode()
        for _, f in await redis.xrange(keys.dead_letters)
    }
    for cid, why in whys.items():
        assert why in dead[cid], (cid, dead[cid])
        assert await redis.exists(keys.result(cid)) == 0


async def test_a_worker_without_a_secret_dead_letters_webhook_entries_at_once(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    sim.state.set_script("9650", ["FINISHED"])
    await redis.xadd(
        keys.intake, {"container_id": "9650", "webhook_url": "https://hooks.example.com/x"}
    )
    async with running_worker(settings):  # the test settings have no WEBHOOK_SECRET
        await wait_until(lambda: redis.xlen(keys.dead_letters), timeout=10)
    ((_, f),) = await redis.xrange(keys.dead_letters)
    assert b"no WEBHOOK_SECRET" in f[b"reason"]
    assert await redis.exists(keys.result("9650")) == 0
    assert await redis.hget(keys.config, "webhook_signing") == b"0"  # type: ignore[misc]


# ----- at delivery: the address actually connected to --------------------------------------


async def test_dns_that_changes_after_enqueue_is_caught_at_delivery(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """Public at enqueue, loopback at delivery (DNS rebinding): nothing reaches the receiver.
    Allowed by name, the same resolver leads to the receiver: the mapping does connect."""
    async with receiver() as rec:
        port = rec.url.rsplit(":", 1)[1].split("/")[0]
        url = f"http://rebind.example.com:{port}/hook"
        at_enqueue = Table({"rebind.example.com": ["93.184.216.34"]})
        at_delivery = MapResolver({"rebind.example.com": ["127.0.0.1"]})
        for cid, allowed in (("9660", ""), ("9661", "rebind.example.com")):
            s = guarded(settings, webhook_allowed_hosts=allowed)
            sim.state.set_script(cid, ["FINISHED"])
            async with PollerClient.from_settings(s, redis, webhook_resolve=at_enqueue) as c:
                await c.enqueue(cid, webhook_url=url)
            async with running_worker(s, webhook_resolver=at_delivery):
                await wait_until(partial(_settled, redis, s, cid), timeout=15)
    dead = await dead_letters(redis, keys)
    assert set(dead) == {"9660"}
    assert dead["9660"]["attempts"] == "1"  # refused at once, not retried
    assert "rebind.example.com resolves to a loopback address: 127.0.0.1" in dead["9660"]["reason"]
    assert len(rec.got) == 1  # only 9661's delivery
    body, headers = rec.got[0]
    assert json.loads(body)["container_id"] == "9661"
    assert verifies(SECRET, body, headers)


async def _settled(redis: Redis, settings: Settings, cid: str) -> bool:
    return await webhook_state(redis, settings, cid) in ("delivered", "dead")


async def test_a_stored_literal_is_refused_at_delivery(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    """A URL that never went through an enqueue check (written before the guard existed, or
    by someone with the worker's Redis rights) is still not called."""
    settings = guarded(settings)
    async with receiver() as rec:
        port = rec.url.rsplit(":", 1)[1].split("/")[0]
        urls = {
            "9670": rec.url,
            "9671": f"http://[::ffff:127.0.0.1]:{port}/hook",
            "9672": f"http://2130706433:{port}/hook",
            "9673": "https://...",
        }
        store = store_for(redis, settings)
        for cid, url in urls.items():
            sim.state.set_script(cid, ["FINISHED"])
            await store.enqueue([EnqueueRequest(cid, webhook_url=url)])
        async with running_worker(settings):

            async def all_dead() -> bool:
                return all([await webhook_state(redis, settings, c) == "dead" for c in urls])

            await wait_until(all_dead, timeout=15)
    assert rec.got == []
    dead = await dead_letters(redis, keys)
    assert "loopback address: 127.0.0.1" in dead["9670"]["reason"]
    assert "loopback address: ::ffff:7f00:1" in dead["9671"]["reason"]
    assert "non-canonical IPv4" in dead["9672"]["reason"]
    assert "not a valid host name" in dead["9673"]["reason"]
    assert {d["attempts"] for d in dead.values()} == {"1"}


async def test_redirects_are_not_followed(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = guarded(settings, webhook_allowed_hosts="127.0.0.1")
    sim.state.set_script("9680", ["FINISHED"])
    async with receiver(redirect=True) as rec:
        async with PollerClient.from_settings(settings, redis) as client:
            await client.enqueue("9680", webhook_url=rec.url)
        async with running_worker(settings):
            await wait_until(lambda: _settled(redis, settings, "9680"), timeout=15)
    assert len(rec.got) == 1 and rec.inner == 0
    assert (await dead_letters(redis, keys))["9680"]["reason"] == "HTTP 307"


async def test_an_endless_answer_is_read_only_so_far(
    redis: Redis, settings: Settings, sim: RunningSimulator
) -> None:
    settings = guarded(settings, webhook_allowed_hosts="127.0.0.1", webhook_timeout_seconds=5.0)
    sim.state.set_script("9690", ["FINISHED"])
    async with receiver(endless=True) as rec:
        async with PollerClient.from_settings(settings, redis) as client:
            await client.enqueue("9690", webhook_url=rec.url)
        t0 = time.monotonic()
        async with running_worker(settings):
            await wait_until(lambda: _settled(redis, settings, "9690"), timeout=15)
            took = time.monotonic() - t0
    assert await webhook_state(redis, settings, "9690") == "delivered"
    # Reading the whole answer would have run into the 5 s timeout.
    assert took < 5.0


def local_private_ipv4() -> IPv4Address | None:
    """An RFC 1918 address of this machine, if it has one (/proc/net/fib_trie)."""
    try:
        lines = Path("/proc/net/fib_trie").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    rfc1918 = [ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
    for before, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line:
            address = IPv4Address(before.split()[-1])
            if any(address in net for net in rfc1918):
                return address
    return None


async def test_allow_private_addresses_reaches_a_private_receiver(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    address = local_private_ipv4()
    if address is None:
        pytest.skip("this machine has no RFC 1918 address to listen on")
    sim.state.set_script("9695", ["FINISHED"])
    sim.state.set_script("9696", ["FINISHED"])
    async with receiver(str(address)) as rec:
        default = guarded(settings)
        with pytest.raises(InvalidIdError, match="private address"):
            async with PollerClient.from_settings(default, redis) as client:
                await client.enqueue("9695", webhook_url=rec.url)
        # Stored anyway (bypassing the enqueue check): the delivery refuses it too.
        await store_for(redis, default).enqueue([EnqueueRequest("9695", webhook_url=rec.url)])
        async with running_worker(default):
            await wait_until(lambda: _settled(redis, default, "9695"), timeout=15)
        opened = guarded(settings, webhook_allow_private_addresses=True)
        async with PollerClient.from_settings(opened, redis) as client:
            await client.enqueue("9696", webhook_url=rec.url)
        async with running_worker(opened):
            await wait_until(lambda: _settled(redis, opened, "9696"), timeout=15)
    assert await webhook_state(redis, default, "9695") == "dead"
    assert await webhook_state(redis, opened, "9696") == "delivered"
    assert [json.loads(b)["container_id"] for b, _ in rec.got] == ["9696"]
