"""``threads-poller demo``: the whole service on one machine, no credentials.

Local Redis (a private redis-server is started when ``REDIS_URL`` does not answer; with
``REDIS_CLUSTER_NODES``, that Redis Cluster), the built-in Threads API simulator, and a real
``threads-poller worker`` process. A handful of containers,
scripted so that between them they reach every final state, are fed through both doors (the
Python API and the Redis intake stream); progress is shown live and a table closes the run.
The containers fed through the Python API also get a signed webhook, received by the demo itself
on 127.0.0.1: the SSRF guard refuses loopback targets, so the demo allows that one explicitly
(``WEBHOOK_ALLOWED_HOSTS=127.0.0.1``), as a deployment names its in-cluster receivers.

With ``--serve`` the demo then leaves ``threads-poller serve`` (the console and the HTTP API)
running on its data, with a read-write key made for it, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from config import Settings, load_settings
from config.settings import redacted_url
from simulator import run_simulator
from worker.client.producer import enqueue, enqueue_many
from worker.client.reader import get_result
from worker.core.result import PollResult
from worker.store.connections import open_redis
from worker.store.keys import Keys

DEMO_TOKEN = "demo-token-not-a-real-secret"  # noqa: S105 - the simulator takes any token
# Standard Webhooks' form: whsec_ + the base64 of the key ("demo-webhook-key-not-a-real-one!").
DEMO_WEBHOOK_SECRET = "whsec_ZGVtby13ZWJob29rLWtleS1ub3QtYS1yZWFsLW9uZSE="  # noqa: S105
DEMO_PREFIX = "threads-poller-demo"
# On a Redis Cluster (REDIS_CLUSTER_NODES) the demo's keys carry a hash tag: one slot.
DEMO_CLUSTER_PREFIX = "{threads-poller-demo}"
# The demo's receiver listens on loopback, which the SSRF guard refuses unless allowed.
DEMO_ALLOWED_HOSTS = "127.0.0.1"


@dataclass
class Deliveries:
    """What the demo's webhook receiver got: container id -> signature verified."""

    url: str = ""
    verified: dict[str, bool] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Deliveries]:
    from aiohttp import web

    from config.webhook_keys import parse_secrets
    from worker.core.signing import verify_standard

    got = Deliveries()
    (secret,) = parse_secrets(DEMO_WEBHOOK_SECRET)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_standard(secret.key, body, request.headers, now=time.time())
        got.verified[str(json.loads(body).get("container_id"))] = ok
        return web.Response(status=200 if ok else 401)

    app = web.Application()
    app.router.add_post("/threads-hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/threads-hook"
    try:
        yield got
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class Scenario:
    container_id: str
    story: str
    steps: tuple[str, ...]
    expect: str
    # A carousel: its children's scripts (the row is the parent's).
    children: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # A reply, auto-published.
    reply_to: str | None = None
    # Whose container (api_client.platforms); an Instagram one is auto-published when
    # ``publish``.
    platform: str = "threads"
    publish: bool = False


def _sc(n: int, story: str, steps: str, expect: str, **more: object) -> Scenario:
    return Scenario(f"17900000000000{n:02d}", story, tuple(steps.split(",")), expect, **more)  # type: ignore[arg-type]


def _kid(n: int, steps: str) -> tuple[str, tuple[str, ...]]:
    return f"17900000000001{n:02d}", tuple(steps.split(","))


SCENARIOS = (
    _sc(1, "video ready on the 3rd check", "IN_PROGRESS,IN_PROGRESS,FINISHED", "FINISHED"),
    _sc(2, "video URL not downloadable", "IN_PROGRESS,ERROR:FAILED_DOWNLOADING_VIDEO", "ERROR"),
    _sc(3, "published by the pipeline meanwhile", "IN_PROGRESS,PUBLISHED", "PUBLISHED"),
    _sc(4, "not published within 24 h", "EXPIRED", "EXPIRED"),
    _sc(5, "still processing when the window ends", "IN_PROGRESS", "TIMED_OUT"),
    _sc(6, "wrong id (Graph 100/33)", "notfound", "FAILED"),
    _sc(7, "API 503 and a garbage body, then ready", "503,garbage,FINISHED", "FINISHED"),
    _sc(8, "image rejected (error UNKNOWN)", "ERROR:UNKNOWN", "ERROR"),
    _sc(9, "throttled (code 4), then ready", "throttle,IN_PROGRESS,FINISHED", "FINISHED"),
    _sc(
        10,
        "carousel of 2: parent polled once both children FINISHED",
        "IN_PROGRESS,FINISHED",
        "FINISHED",
        children=(_kid(1, "FINISHED"), _kid(2, "IN_PROGRESS,FINISHED")),
    ),
    _sc(
        11,
        "video reply, auto-published after its settle time",
        "IN_PROGRESS,FINISHED",
        "PUBLISHED",
        reply_to="17900000000009999",
    ),
    # Instagram containers beside them: the same lifecycle, Instagram's wire format.
    _sc(
        12,
        "Instagram video ready, auto-published once",
        "IN_PROGRESS,FINISHED",
        "PUBLISHED",
        platform="instagram",
        publish=True,
    ),
    _sc(
        13,
        "Instagram upload failed (subcode 2207026)",
        "IN_PROGRESS,ERROR:2207026",
        "ERROR",
        platform="instagram",
    ),
    _sc(
        14,
        "Instagram rate limit (80002), then ready",
        "throttle:80002,FINISHED",
        "FINISHED",
        platform="instagram",
    ),
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _redis_answers(url: str) -> bool:
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def local_redis(url: str, workdir: Path) -> AsyncIterator[str]:
    """Yield a Redis URL that answers: the configured one, or a private redis-server."""
    if await _redis_answers(url):
        print(f"Redis: using {redacted_url(url)}")
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            f"Redis at {url} does not answer and redis-server is not installed "
            "(scripts/demo.sh installs it)."
        )
    port = _free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Ctrl-C reaches the demo alone, which stops the console and the worker before Redis.
        start_new_session=True,
    )
    started = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            if await _redis_answers(started):
                break
            await asyncio.sleep(0.05)
        print(
            f"Redis: {redacted_url(url)} did not answer; started a private redis-server at "
            f"{started}"
        )
        yield started
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _worker_command() -> list[str]:
    script = Path(sys.executable).parent / "threads-poller"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def cluster_redis(settings: Settings) -> AsyncIterator[str]:
    """REDIS_CLUSTER_NODES: the cluster itself (REDIS_URL gives only its credentials)."""
    client = open_redis(settings, connect_timeout=2.0)
    try:
        await client.ping()
    except Exception as exc:
        raise SystemExit(
            f"the Redis Cluster at REDIS_CLUSTER_NODES={settings.redis_cluster_nodes} does not "
            f"answer ({type(exc).__name__})"
        ) from None
    finally:
        await client.aclose()
    print(f"Redis Cluster: {settings.redis_cluster_nodes} (KEY_PREFIX={settings.key_prefix})")
    yield settings.redis_url


async def run_demo(
    interval: float, window: float, give_up_after: float, *, serve: bool = False, port: int = 0
) -> int:
    # The demo's own prefix, tagged when the settings name a cluster (valid either way).
    base = load_settings(key_prefix=DEMO_CLUSTER_PREFIX)
    cluster = bool(base.redis_cluster_nodes)
    prefix = DEMO_CLUSTER_PREFIX if cluster else DEMO_PREFIX
    workdir = Path(tempfile.mkdtemp(prefix="threads-poller-demo-"))
    print(
        f"Meta's schedule is one check a minute for up to 5 minutes; this demo compresses it to "
        f"one check every {interval:g} s for up to {window:g} s (--interval, --window), and a "
        f"throttled account's pause, the publish's minimum age and a reply's settle time from "
        f"60 s, 30 s and 30 s to {interval:g} s."
    )
    store = cluster_redis(base) if cluster else local_redis(base.redis_url, workdir)
    async with (
        store as redis_url,
        run_simulator(port=0) as sim,
        webhook_receiver() as hooks,
    ):
        print(f"Threads API simulator: {sim.base_url} (Instagram: {sim.instagram_url})")
        print(f"Webhook receiver: {hooks.url} (WEBHOOK_ALLOWED_HOSTS={DEMO_ALLOWED_HOSTS})")
        for sc in SCENARIOS:
            sim.state.set_script(sc.container_id, sc.steps)
            for kid, steps in sc.children:
                sim.state.set_script(kid, steps)
            if sc.children:
                sim.state.set_carousel(sc.container_id, [kid for kid, _ in sc.children])
            if sc.reply_to:
                # Published sooner than this after FINISHED, the reply would lose its reply_to.
                sim.state.set_reply(sc.container_id, sc.reply_to, settle_seconds=interval / 2)
        settings: Settings = load_settings(
            redis_url=redis_url,
            threads_api_base_url=sim.base_url,
            instagram_api_base_url=sim.instagram_url,
            poll_interval_seconds=interval,
            poll_max_seconds=window,
            key_prefix=prefix,
            webhook_allowed_hosts=DEMO_ALLOWED_HOSTS,
        )
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            THREADS_API_BASE_URL=sim.base_url,
            THREADS_ACCESS_TOKEN=DEMO_TOKEN,
            INSTAGRAM_API_BASE_URL=sim.instagram_url,
            INSTAGRAM_ACCESS_TOKEN=DEMO_TOKEN,
            POLL_INTERVAL_SECONDS=str(interval),
            POLL_MAX_SECONDS=str(window),
            # Compressed like the schedule: the default first pause is 60 s, the publish waits
            # 30 s after enqueue and a reply 30 s after FINISHED.
            THROTTLE_BACKOFF_SECONDS=str(interval),
            PUBLISH_MIN_AGE_SECONDS=str(interval),
            PUBLISH_REPLY_SETTLE_SECONDS=str(interval),
            PUBLISH_GRACE_SECONDS=str(interval / 4),
            KEY_PREFIX=prefix,
            LOG_FORMAT="json",
            WEBHOOK_SECRET=DEMO_WEBHOOK_SECRET,
            WEBHOOK_ALLOWED_HOSTS=DEMO_ALLOWED_HOSTS,
        )
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                *_worker_command(),
                "worker",
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # stopped by the demo (SIGTERM), not by Ctrl-C
            )
        print(f"Worker: pid {worker.pid}, log {log_path}")
        redis = open_redis(settings) if cluster else Redis.from_url(redis_url)
        try:
            rc = await _feed_and_watch(redis, settings, sim.state, worker, give_up_after, hooks)
            if serve:
                await serve_console(env, workdir, port)
            return rc
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(worker.wait(), 30)
            print(f"Worker stopped (exit {worker.returncode}).")
            await redis.aclose()
            print(where_results_are(redis_url, base.redis_url, prefix))
            if not serve:
                print(
                    "To look around in the console on the demo's data: threads-poller demo --serve"
                )


async def _answers(url: str) -> bool:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
            http.get(url) as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def serve_console(env: dict[str, str], workdir: Path, port: int = 0) -> None:
    """``threads-poller serve`` on the demo's Redis and prefix, on loopback, with a read-write
    key of its own, until Ctrl-C or SIGTERM (then stopped like SIGTERM stops it)."""
    key = secrets.token_urlsafe(24)
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "serve.log"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serve_env = dict(env, HTTP_HOST="127.0.0.1", HTTP_PORT=str(port), API_KEYS=key)
    serve_env.pop("API_READ_KEYS", None)
    try:
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *_worker_command(),
                "serve",
                env=serve_env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while not await _answers(f"{url}/healthz"):
                if stop.is_set():
                    return
                if proc.returncode is not None or time.monotonic() > deadline:
                    print(f"The console did not start; see {log_path}.", flush=True)
                    return
                await asyncio.sleep(0.1)
            print(
                f"\nConsole: {url}/  (sign in with the key; the API is at {url}/v1)\n"
                f"API key (read-write, made for this demo): {key}\n"
                f"  curl -H 'Authorization: Bearer {key}' {url}/v1/overview\n"
                f"Serving the demo's data (log {log_path}); Ctrl-C stops the console, the worker "
                "and the demo.",
                flush=True,
            )
            ended = asyncio.ensure_future(proc.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if proc.returncode is not None:
                print(f"The console exited ({proc.returncode}); see {log_path}.", flush=True)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
                print(f"\nConsole stopped (exit {proc.returncode}).", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def where_results_are(used_url: str, configured_url: str, prefix: str = DEMO_PREFIX) -> str:
    """The closing hint: read the results only where they still are."""
    cli = " ".join(_worker_command())
    if prefix != DEMO_PREFIX:
        return (
            f"Results stay in the cluster for RESULT_TTL_SECONDS: "
            f"KEY_PREFIX='{prefix}' {cli} status {SCENARIOS[0].container_id}"
        )
    if used_url != configured_url:
        return (
            "The demo's private Redis stopped with it, results included. To keep them, start "
            f"a Redis at REDIS_URL ({configured_url}) and run the demo again; then read them "
            f"with: KEY_PREFIX={DEMO_PREFIX} {cli} status {SCENARIOS[0].container_id}"
        )
    return (
        f"Results stay in {configured_url} for RESULT_TTL_SECONDS: "
        f"KEY_PREFIX={DEMO_PREFIX} {cli} status {SCENARIOS[0].container_id}"
    )


async def _feed_and_watch(
    redis: Redis,
    settings: Settings,
    sim_state: object,
    worker: asyncio.subprocess.Process,
    give_up_after: float,
    hooks: Deliveries,
) -> int:
    """Feed every scenario through its door, watch them until final, print the table."""
    keys = Keys(settings.key_prefix)
    hooked = await _feed(redis, settings, keys, worker, hooks)
    results = await _watch(redis, settings, worker, give_up_after, hooks, hooked)
    if results is None:
        print("The worker exited early; see its log.")
        return 1
    return 0 if await _report(redis, keys, sim_state, results, hooks, hooked) else 1


async def _feed(
    redis: Redis,
    settings: Settings,
    keys: Keys,
    worker: asyncio.subprocess.Process,
    hooks: Deliveries,
) -> list[str]:
    """Every scenario enqueued (the Python API, the intake stream, a carousel, a reply,
    Instagram's); returns the ids that carry a signed webhook."""
    # Clear the previous demo's results so every container is polled afresh.
    for sc in SCENARIOS:
        await redis.delete(keys.result(sc.container_id), *(keys.result(k) for k, _ in sc.children))
    plain = [
        sc for sc in SCENARIOS if not sc.children and not sc.reply_to and sc.platform == "threads"
    ]
    instagram = [sc for sc in SCENARIOS if sc.platform == "instagram"]
    half = len(plain) // 2
    hooked = [s.container_id for s in plain[:half]]
    # Before the worker has said it can sign (it publishes that at start), a producer without
    # the secret cannot know: wait for it, as a pipeline started with its workers would.
    await _wait_for_config(redis, keys, worker)
    await enqueue_many(redis, hooked, webhook_url=hooks.url, settings=settings)
    for sc in plain[half:]:
        await redis.xadd(keys.intake, {"container_id": sc.container_id})
    for sc in SCENARIOS:
        if sc.children:
            kids = ",".join(kid for kid, _ in sc.children)
            await redis.xadd(keys.intake, {"container_id": sc.container_id, "children": kids})
        if sc.reply_to:
            await enqueue(
                redis, sc.container_id, publish=True, reply_to=sc.reply_to, settings=settings
            )
    # Instagram's: one through the intake stream (its platform field), the others the API.
    for sc in instagram[:-1]:
        await enqueue(
            redis, sc.container_id, publish=sc.publish, platform=sc.platform, settings=settings
        )
    await redis.xadd(
        keys.intake, {"container_id": instagram[-1].container_id, "platform": "instagram"}
    )
    print(
        f"Enqueued {half + 1} Threads containers with the Python API ({half} with a signed "
        f"webhook, one a reply, auto-published) and {len(plain) - half} with XADD "
        f"{keys.intake}, plus a carousel (XADD with children), and {len(instagram)} Instagram "
        "containers (one auto-published, one by XADD)\n"
    )
    return hooked


async def _watch(
    redis: Redis,
    settings: Settings,
    worker: asyncio.subprocess.Process,
    give_up_after: float,
    hooks: Deliveries,
    hooked: list[str],
) -> dict[str, PollResult | None] | None:
    """Each scenario's result once all are final and their webhooks in (or the time is up);
    None when the worker exited."""
    t0 = time.monotonic()
    results: dict[str, PollResult | None] = {}
    while True:
        for sc in SCENARIOS:
            results[sc.container_id] = await get_result(redis, sc.container_id, settings=settings)
        counts = Counter(r.status if r else "waiting for intake" for r in results.values())
        finals = sum(1 for r in results.values() if r and r.final)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"  t={time.monotonic() - t0:5.1f}s  final {finals}/{len(SCENARIOS)}  |  {summary}")
        hooks_done = all(cid in hooks.verified for cid in hooked)
        if (finals == len(SCENARIOS) and hooks_done) or time.monotonic() - t0 > give_up_after:
            return results
        if worker.returncode is not None:
            return None
        await asyncio.sleep(1.0)


async def _report(
    redis: Redis,
    keys: Keys,
    sim_state: object,
    results: dict[str, PollResult | None],
    hooks: Deliveries,
    hooked: list[str],
) -> bool:
    """The table of scenarios against what each expects; True when every one met it."""
    calls = getattr(sim_state, "calls_for")  # noqa: B009 - the simulator's call log
    header = ["container", "platform", "scenario", "status", "error_message", "checks"]
    rows = [[*header, "API calls", "ok"]]
    ok = True
    for sc in SCENARIOS:
        r = results[sc.container_id]
        status = r.status if r else "-"
        good = r is not None and r.final and status == sc.expect
        ok &= good
        rows.append(
            [
                sc.container_id,
                sc.platform,
                sc.story,
                status,
                (r.error_message or "") if r else "",
                str(r.checks) if r else "0",
                str(calls(sc.container_id).count),
                "yes" if good else f"NO (expected {sc.expect})",
            ]
        )
    print()
    print(_table(rows))
    events = await redis.xlen(keys.events)
    print(f"\nEvents stream {keys.events}: {events} entries; results in {keys.result('ID')}.")
    signed = sum(1 for cid in hooked if hooks.verified.get(cid))
    print(f"Webhooks received with a valid signature: {signed} of {len(hooked)}")
    ok &= signed == len(hooked)
    print("Every scenario reached its expected final state." if ok else "SOME SCENARIOS FAILED.")
    return ok


async def _wait_for_config(redis: Redis, keys: Keys, worker: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        if await redis.hget(keys.config, "webhook_signing") == b"1" or worker.returncode:  # type: ignore[misc]
            return
        await asyncio.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threads-poller demo", description=__doc__)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    parser.add_argument("--window", type=float, default=10.0, help="polling window in seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after seconds")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="then leave the console (threads-poller serve) running on the demo's data, "
        "printing its URL and a key, until Ctrl-C",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="the console's port with --serve (default: a free one)"
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(
            run_demo(args.interval, args.window, args.timeout, serve=args.serve, port=args.port)
        )
    except KeyboardInterrupt:
        return 130
