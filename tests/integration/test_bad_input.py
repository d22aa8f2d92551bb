"""Bad input at every door: the Python API, the CLI, the intake stream and the API's replies.

For each door: junk gets a clear error (or a dead letter), the worker keeps running (a good
container enqueued after the junk is still finished), and nothing already queued is lost (a
container enqueued before the junk still reaches its final state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from api_client.errors import ThreadsError
from api_client.parsing import parse_container_status
from api_client.policy import classify
from bench.harness import RedisServer
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli, start_worker
from tests.helpers.env import worker_env
from tests.helpers.receivers import serving_app
from tests.helpers.settings import make_settings
from tests.helpers.waiting import wait_until
from tests.helpers.worker import running_worker
from worker import enqueue, enqueue_many, get_result, wait_for
from worker.core.errors import InvalidIdError
from worker.core.result import PollResult
from worker.core.states import API_FINAL_STATES, FINAL_STATES
from worker.runtime.app import PollerWorker
from worker.store.keys import INTAKE_GROUP, Keys

T = TypeVar("T")

SLOW_FINISH = ["IN_PROGRESS", "IN_PROGRESS", "FINISHED"]


async def final_status(redis: Redis, settings: Settings, cid: str) -> str | None:
    r = await get_result(redis, cid, settings=settings)
    return r.status if r is not None and r.final else None


async def result_ids(redis: Redis, keys: Keys) -> set[str]:
    prefix = keys.result("")
    return {k.decode()[len(prefix) :] async for k in redis.scan_iter(prefix + "*")}


# ----- the Python API ----------------------------------------------------------------------

BAD_IDS = [
    pytest.param(None, "string of digits", id="None"),
    pytest.param(123, "got int", id="int"),
    pytest.param(12.5, "got float", id="float"),
    pytest.param(True, "got bool", id="bool"),
    pytest.param(b"123", "got bytes", id="bytes"),
    pytest.param(["123"], "got list", id="list"),
    pytest.param("", "empty", id="empty"),
    pytest.param("   \t\n", "empty", id="whitespace"),
    pytest.param("1" * 1_000_000, "at most 32", id="huge-digits"),
    pytest.param("x" * 1_000_000, "at most 32", id="huge-junk"),
    pytest.param("1" * 33, "at most 32", id="33-digits"),
    pytest.param("١٢٣", "digits only", id="arabic-indic-digits"),
    pytest.param("\uff11\uff12\uff13", "digits only", id="fullwidth-digits"),
    pytest.param("²³", "digits only", id="superscript-digits"),
    pytest.param("12\x003", "digits only", id="nul"),
    pytest.param("\u200b123", "digits only", id="zero-width-space"),
    pytest.param("-5", "digits only", id="negative"),
    pytest.param("+5", "digits only", id="plus"),
    pytest.param("1e5", "digits only", id="exponent"),
    pytest.param("0x1F", "digits only", id="hex"),
    pytest.param("12 3", "digits only", id="inner-space"),
    pytest.param("123; DEL *", "digits only", id="injection"),
    pytest.param("🙂", "digits only", id="emoji"),
]


@pytest.mark.parametrize(("bad", "why"), BAD_IDS)
async def test_python_api_refuses_bad_ids_and_writes_nothing(
    redis: Redis, settings: Settings, bad: Any, why: str
) -> None:
    with pytest.raises(InvalidIdError, match=why) as one:
        await enqueue(redis, bad, settings=settings)
    with pytest.raises(InvalidIdError, match=why):
        await enqueue_many(redis, ["111", bad, "222"], settings=settings)
    with pytest.raises(InvalidIdError, match=why):
        await get_result(redis, bad, settings=settings)
    if bad is not None:  # None is "no account"
        with pytest.raises(InvalidIdError, match=why):
            await enqueue(redis, "111", account=bad, settings=settings)
    assert len(str(one.value)) < 200  # a huge input is never echoed back in full
    assert await redis.dbsize() == 0  # the good ids of the same batch were not written either


@pytest.mark.parametrize("spaced", [" 123 ", "\t123\n", "\u00a0123\u2003", "123\r\n"])
async def test_python_api_trims_surrounding_whitespace(
    redis: Redis, settings: Settings, keys: Keys, spaced: str
) -> None:
    out = await enqueue(redis, spaced, settings=settings)
    assert (out.container_id, out.outcome) == ("123", "enqueued")
    assert await result_ids(redis, keys) == {"123"}


@pytest.mark.parametrize("bad", [None, 123, 12.5, object()])
async def test_python_api_refuses_a_non_iterable_batch(
    redis: Redis, settings: Settings, bad: Any
) -> None:
    with pytest.raises((TypeError, InvalidIdError)):
        await enqueue_many(redis, bad, settings=settings)
    assert await redis.dbsize() == 0


async def test_python_api_refuses_a_string_as_a_batch(redis: Redis, settings: Settings) -> None:
    with pytest.raises((TypeError, InvalidIdError)):
        await enqueue_many(redis, "17889615691921648", settings=settings)
    assert await redis.dbsize() == 0


async def test_python_api_bounds_a_batch(redis: Redis, settings: Settings) -> None:
    """One call is one pipeline: at most MAX_BATCH ids, refused before anything is sent (an
    endless generator included); the CLI splits a longer stdin into such batches."""
    import itertools

    from worker.core.ids import MAX_BATCH

    with pytest.raises(InvalidIdError, match=f"at most {MAX_BATCH} ids"):
        await enqueue_many(redis, (str(i) for i in itertools.count(1)), settings=settings)
    assert await redis.dbsize() == 0
    outs = await enqueue_many(redis, [str(i) for i in range(1, MAX_BATCH + 1)], settings=settings)
    assert len(outs) == MAX_BATCH


async def test_cli_enqueues_a_long_stdin_in_batches(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    from worker.core.ids import MAX_BATCH

    ids = b"".join(b"%d\n" % i for i in range(1, MAX_BATCH + 51)) + b"7\n"
    code, out, err = await run_cli("enqueue", env=worker_env(project_env, settings), stdin=ids)
    assert code == 0, err
    assert len(out.splitlines()) == MAX_BATCH + 50  # "7" again: folded into its first line
    assert await redis.zcard(Keys(settings.key_prefix).queue) == MAX_BATCH + 50


async def test_python_api_junk_leaves_the_worker_and_the_queue_alone(
    redis: Redis, settings: Settings, sim: RunningSimulator, keys: Keys
) -> None:
    settings = settings.model_copy(update={"poll_max_seconds": 10.0})
    sim.state.set_script("5001", SLOW_FINISH)
    sim.state.set_script("5002", ["FINISHED"])
    await enqueue(redis, "5001", settings=settings)  # queued before the junk
    async with running_worker(settings) as worker:
        for param in BAD_IDS:
            bad: Any = param.values[0]
            with pytest.raises(InvalidIdError):
                await enqueue(redis, bad, settings=settings)
            with pytest.raises(InvalidIdError):
                await enqueue_many(redis, ["5003", bad], settings=settings)
        await enqueue(redis, "5002", settings=settings)  # after the junk

        async def both_final() -> bool:
            return {await final_status(redis, settings, c) for c in ("5001", "5002")} == {
                "FINISHED"
            }

        await wait_until(both_final, timeout=15)
        assert worker.alive
    assert await result_ids(redis, keys) == {"5001", "5002"}
    assert sim.state.calls_for("5001").count == 3


# ----- the command line --------------------------------------------------------------------


CLI_JUNK = [
    pytest.param(["enqueue", "12x"], None, "digits only", id="enqueue-letters"),
    pytest.param(["enqueue", "-5"], None, "", id="enqueue-negative"),
    pytest.param(["enqueue", "1" * 100_000], None, "at most 32", id="enqueue-huge-arg"),
    pytest.param(["enqueue", "١٢٣"], None, "digits only", id="enqueue-unicode-digits"),
    pytest.param(["enqueue", "123", ""], None, "empty", id="enqueue-empty-arg"),
    pytest.param(["enqueue", "--account", "me@x", "123"], None, "account id", id="bad-account"),
    pytest.param(["enqueue", "--bogus", "1"], None, "unrecognized", id="unknown-option"),
    pytest.param(["enqueue"], b"\xff\xfe\x00\x01junk\n123\n", "digits only", id="stdin-binary"),
    pytest.param(["enqueue"], b"\x00" * 4096, "at most 32", id="stdin-nuls"),
    pytest.param(["enqueue"], random.Random(5).randbytes(65_536), "", id="stdin-random-64k"),
    pytest.param(["enqueue"], b"", "no container ids", id="stdin-empty"),
    pytest.param(["enqueue"], b"  \n\t\r\n", "no container ids", id="stdin-blank"),
    pytest.param(["enqueue"], b"123\n" + b"9" * 10_000 + b"\n", "at most 32", id="stdin-long"),
    pytest.param(["enqueue"], b"1" * (2 << 20), "longer than", id="stdin-one-huge-line"),
    pytest.param(["enqueue"], b"1\n" * 1_000_001, "split the input", id="stdin-too-many"),
    pytest.param(["status", "abc"], None, "digits only", id="status-letters"),
    pytest.param(["status", ""], None, "empty", id="status-empty"),
    pytest.param(["status", "12", "1" * 5000], None, "at most 32", id="status-huge"),
    pytest.param(["wait", "abc", "--timeout", "1"], None, "digits only", id="wait-letters"),
    pytest.param(["wait", "١٢٣", "--timeout", "1"], None, "digits only", id="wait-unicode"),
    pytest.param(["wait", "123", "--timeout", "soon"], None, "invalid float", id="wait-timeout"),
    pytest.param(["wait"], None, "required", id="wait-no-id"),
]


def assert_clear_usage_error(code: int, out: str, err: str, why: str) -> None:
    assert code == 2, (code, out, err[-2000:])
    assert out == ""
    assert "Traceback" not in err and err.strip()
    assert len(err) < 2000 and err.count("\n") <= 6, err[:3000]  # argparse: usage + one line
    assert why in err


@pytest.mark.parametrize(("args", "stdin", "why"), CLI_JUNK)
async def test_cli_refuses_junk_with_exit_2_and_writes_nothing(
    redis: Redis,
    settings: Settings,
    project_env: dict[str, str],
    args: list[str],
    stdin: bytes | None,
    why: str,
) -> None:
    code, out, err = await run_cli(*args, env=worker_env(project_env, settings), stdin=stdin)
    assert_clear_usage_error(code, out, err, why)
    assert await redis.dbsize() == 0


async def test_cli_accepts_crlf_and_surrounding_blanks_on_stdin(
    redis: Redis, settings: Settings, project_env: dict[str, str], keys: Keys
) -> None:
    code, out, err = await run_cli(
        "enqueue", env=worker_env(project_env, settings), stdin=b" 6001\r\n\t6002  6001\r\n"
    )
    assert code == 0, err
    assert out.splitlines() == [
        "6001  enqueued",
        "6002  enqueued",
    ]
    assert await result_ids(redis, keys) == {"6001", "6002"}


async def test_cli_wait_with_a_negative_timeout_returns_at_once(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings)
    await enqueue(redis, "6012", settings=settings)
    code, out, _ = await run_cli("wait", "6012", "--timeout", "-1", env=env)
    assert code == 3 and "QUEUED" in out  # known, not final: "still processing"


async def test_cli_wait_on_an_unknown_id_exits_1_at_once(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    """Never enqueued is not "still processing": exit 1 now, not 3 after the timeout."""
    env = worker_env(project_env, settings)
    started = time.monotonic()
    code, out, err = await run_cli("wait", "6010", "--timeout", "60", env=env)
    assert time.monotonic() - started < 15
    assert code == 1 and out == ""
    assert err.strip() == (
        "threads-poller: unknown id 6010: never enqueued (or its result expired); "
        "nothing to wait for"
    )
    code, out, _ = await run_cli("wait", "6010", "--timeout", "60", "--json", env=env)
    assert code == 1 and json.loads(out)["found"] is False


async def test_cli_wait_refuses_a_nan_timeout(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    code, out, err = await run_cli(
        "wait", "6011", "--timeout", "nan", env=worker_env(project_env, settings)
    )
    assert_clear_usage_error(code, out, err, "timeout")


BAD_ENV = [
    ("POLL_INTERVAL_SECONDS", "-1"),
    ("POLL_INTERVAL_SECONDS", "0"),
    ("POLL_INTERVAL_SECONDS", "nan"),
    ("POLL_INTERVAL_SECONDS", "inf"),
    ("POLL_INTERVAL_SECONDS", "soon"),
    ("POLL_MAX_SECONDS", "-5"),
    ("HTTP_TIMEOUT_SECONDS", "0"),
    ("WORKER_MAX_JOBS", "0"),
    ("WORKER_MAX_JOBS", "1.5"),
    ("RESULT_TTL_SECONDS", "abc"),
    ("EVENTS_MAX_LEN", "-1"),
    ("KEY_PREFIX", "a b"),
    ("KEY_PREFIX", ""),
    ("LOG_LEVEL", "LOUD"),
    ("THREADS_API_BASE_URL", "ftp://x"),
    ("THREADS_API_BASE_URL", "not a url"),
    ("THREADS_API_BASE_URL", ""),
    ("JOB_TIMEOUT_SECONDS", "1"),  # less than twice HTTP_TIMEOUT_SECONDS (1)
]


def assert_one_line_setting_error(code: int, err: str, name: str) -> None:
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err
    line = err.strip()
    assert "\n" not in line and line.startswith("threads-poller: invalid setting"), line[:2000]
    assert name in line


@pytest.mark.parametrize(("name", "value"), BAD_ENV, ids=[f"{n}={v}" for n, v in BAD_ENV])
async def test_cli_bad_setting_is_one_line_exit_2(
    redis: Redis, settings: Settings, project_env: dict[str, str], name: str, value: str
) -> None:
    env = dict(worker_env(project_env, settings), **{name: value})
    # Every command loads the settings the same way; the worker is tried on a few of them.
    commands = [["enqueue", "6020"]] + ([["worker"]] if value in ("-1", "0", "ftp://x") else [])
    for args in commands:
        code, _, err = await run_cli(*args, env=env, timeout=30)
        assert_one_line_setting_error(code, err, name)
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("args", [["enqueue", "6021"], ["status", "6021"], ["worker"]])
async def test_cli_refuses_a_redis_url_that_is_not_a_url(
    settings: Settings, project_env: dict[str, str], args: list[str]
) -> None:
    env = dict(worker_env(project_env, settings), REDIS_URL="not-a-url")
    code, _, err = await run_cli(*args, env=env, timeout=60)
    assert_one_line_setting_error(code, err, "REDIS_URL")


async def test_worker_refuses_an_infinite_intake_claim_idle(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = dict(worker_env(project_env, settings), INTAKE_CLAIM_IDLE_SECONDS="inf")
    code, _, err = await run_cli("worker", env=env, timeout=30)
    assert_one_line_setting_error(code, err, "INTAKE_CLAIM_IDLE_SECONDS")


async def test_cli_junk_leaves_the_worker_and_the_queue_alone(
    redis: Redis, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    settings = settings.model_copy(update={"poll_max_seconds": 10.0})
    env = worker_env(project_env, settings)
    sim.state.set_script("6101", SLOW_FINISH)
    sim.state.set_script("6102", ["PUBLISHED"])
    assert (await run_cli("enqueue", "6101", env=env))[0] == 0  # queued before the junk
    async with running_worker(settings) as worker:
        for param in CLI_JUNK[:10]:
            args, stdin, _ = param.values
            assert isinstance(args, list) and (stdin is None or isinstance(stdin, bytes))
            assert (await run_cli(*args, env=env, stdin=stdin))[0] == 2
        bad_env = dict(env, POLL_INTERVAL_SECONDS="-1")
        assert (await run_cli("enqueue", "6103", env=bad_env))[0] == 2
        assert (await run_cli("enqueue", "6102", env=env))[0] == 0  # after the junk
        code, out, _ = await run_cli("wait", "6102", "--timeout", "15", env=env)
        assert code == 0 and "PUBLISHED" in out
        code, out, _ = await run_cli("wait", "6101", "--timeout", "15", env=env)
        assert code == 0 and "FINISHED" in out
        assert worker.alive
    assert await get_result(redis, "6103", settings=settings) is None


# ----- the intake stream, with a real worker process --------------------------------------

INTAKE_JUNK: list[tuple[dict[Any, Any], str]] = [
    ({"containerid": "7001"}, "unknown field"),
    ({"Container_ID": "7001"}, "unknown field"),
    ({"container_id ": "7001"}, "unknown field"),
    ({"account": "1"}, "missing field container_id"),
    ({"container_id": ""}, "empty"),
    ({"container_id": "   "}, "empty"),
    ({"container_id": "12\x003"}, "digits only"),
    ({"container_id": "١٢٣"}, "digits only"),
    ({"container_id": "7002", "account": "me@example"}, "account id"),
    ({"container_id": "7002", "force": "maybe"}, "force must be"),
    ({b"\xff\xfe": b"\x00\x01"}, "not UTF-8"),
    ({"container_id": b"\xff7003"}, "not UTF-8"),
    ({"container_id": "1" * 1_000_000}, "bytes; the limit"),
    ({f"f{i}": "x" for i in range(1000)}, "bytes; the limit"),
    # Many small fields: judged by their count inside Redis, before any is read.
    ({chr(0x4E00 + i): "" for i in range(300)}, "300 fields; the limit is 32"),
    ({"container_id": "7004", "blob": "x" * 5000}, "bytes; the limit"),
]


async def test_intake_junk_is_dead_lettered_while_the_worker_runs(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    keys: Keys,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    sim.state.set_script("7101", SLOW_FINISH)
    sim.state.set_script("7102", ["EXPIRED"])
    sim.state.set_script("7103", ["ERROR:INVALID_BIT_RATE"])
    env = worker_env(project_env, settings, POLL_INTERVAL_SECONDS="0.5", POLL_MAX_SECONDS="15")
    await redis.xadd(keys.intake, {"container_id": "7101"})  # before the junk and the worker
    log = tmp_path / "worker.log"
    worker = await start_worker(env, log)
    try:
        await wait_until(lambda: sim.state.calls_for("7101").count >= 1, timeout=20)
        for fields, _ in INTAKE_JUNK:
            await redis.xadd(keys.intake, fields)
        # Empty values mean "none" (README): a valid entry, not junk.
        await redis.xadd(keys.intake, {"container_id": "7102", "account": "", "force": ""})
        await redis.xadd(keys.intake, {"container_id": " 7103 ", "force": " No "})

        async def settled() -> bool:
            done = {await final_status(redis, settings, c) for c in ("7101", "7102", "7103")}
            return done == {"FINISHED", "EXPIRED", "ERROR"} and (
                await redis.xlen(keys.dead_letters) == len(INTAKE_JUNK)
            )

        await wait_until(settled, timeout=30)
        assert worker.returncode is None  # still running
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 20)
    dead = await redis.xrange(keys.dead_letters)
    assert len(dead) == len(INTAKE_JUNK)
    for (_, entry), (_, why) in zip(dead, INTAKE_JUNK, strict=True):
        reason = entry[b"reason"].decode()
        assert why in reason, (why, reason)
        assert entry[b"entry_id"] and len(reason) < 4000
        stored = json.loads(entry[b"fields"])  # the original fields, bounded
        assert isinstance(stored, dict) and len(entry[b"fields"]) < 30_000
    assert await redis.xlen(keys.intake) == 0
    assert (await redis.xpending(keys.intake, INTAKE_GROUP))["pending"] == 0
    text = log.read_text()
    assert "Traceback" not in text and "intake consumer error" not in text


# ----- the API's replies, fuzzed, through the real worker ---------------------------------


@dataclass(frozen=True)
class Raw:
    status: int
    content_type: str
    body: bytes
    usage: str | None = None


class ReplyServer:
    """A tiny Graph API stand-in: each container id gets the exact bytes it was given."""

    def __init__(self) -> None:
        self.replies: dict[str, Raw] = {}
        self.calls: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        cid = request.match_info["tail"]
        raw = self.replies.get(cid)
        if raw is None:
            return web.json_response(
                {"error": {"code": 100, "message": "no such path"}}, status=400
            )
        self.calls[cid] = self.calls.get(cid, 0) + 1
        headers = {"Content-Type": raw.content_type}
        if raw.usage is not None:
            headers["X-App-Usage"] = raw.usage
        return web.Response(status=raw.status, body=raw.body, headers=headers)

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/v1.0/{tail:.*}", self.handle)
        async with serving_app(app) as base:
            yield f"{base}/v1.0"


def expected_outcome(cid: str, raw: Raw) -> tuple[str, str | None]:
    """The oracle: what one check (POLL_MAX_SECONDS=0) must end in, from the pure parser."""
    try:
        status = parse_container_status(cid, raw.status, raw.body)
    except ThreadsError as exc:
        return ("FAILED" if classify(exc).is_fatal else "TIMED_OUT"), None
    if status.status in API_FINAL_STATES:
        return status.status, status.error_message
    return "TIMED_OUT", status.error_message


class FuzzHarness:
    """A worker, the reply server and Redis on their own event loop in a thread, so that a plain
    (synchronous) hypothesis test can drive the real worker path example by example."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()
        self.server = ReplyServer()
        self.counter = 0
        self.worker: PollerWorker | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        base_url = await self.stack.enter_async_context(self.server.serve())
        self.settings = make_settings(
            self.redis_url,
            base_url,
            key_prefix="fuzz",
            poll_max_seconds=0.0,  # one check: the reply decides the final state on its own
            throttle_max_delay_seconds=0.0,
        )
        self.redis = Redis.from_url(self.redis_url)
        await self.redis.flushall()
        self.stack.push_async_callback(self.redis.aclose)
        self.worker = await self.stack.enter_async_context(running_worker(self.settings))

    @property
    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.alive

    async def poll(self, raw: Raw, timeout: float = 15) -> PollResult | None:
        self.counter += 1
        cid = str(880_000 + self.counter)
        self.server.replies[cid] = raw
        # Its own account each: a throttled or token-rejected reply must not touch the others.
        await enqueue(self.redis, cid, account=str(990_000 + self.counter), settings=self.settings)
        return await wait_for(self.redis, cid, timeout, settings=self.settings)

    def close(self) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def fuzz(redis_server: RedisServer) -> Iterator[FuzzHarness]:
    harness = FuzzHarness(redis_server.url)
    try:
        harness.run(harness.start())
        yield harness
    finally:
        harness.close()


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
statuses = st.sampled_from(
    ["IN_PROGRESS", "FINISHED", "PUBLISHED", "EXPIRED", "ERROR", " FINISHED ", "finished", ""]
) | st.text(max_size=20)
codes = st.sampled_from([1, 2, 3, 4, 10, 17, 24, 32, 100, 102, 190, 200, 368, 613]) | json_scalars
status_bodies = st.fixed_dictionaries(
    {"status": statuses | json_values},
    optional={
        "id": json_values,
        "error_message": st.sampled_from(["UNKNOWN", "FAILED_PROCESSING_AUDIO"]) | json_values,
    },
)
error_bodies = st.fixed_dictionaries(
    {
        "error": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "code": codes,
                "error_subcode": st.sampled_from([33, 463, 4279009]) | json_scalars,
                "message": json_scalars,
                "type": json_scalars,
                "is_transient": json_scalars,
                "fbtrace_id": json_scalars,
                "error_user_msg": json_scalars,
            },
        )
    }
)


def encode(value: Any, ascii_only: bool, indent: int | None) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()


json_bodies = st.builds(
    encode,
    status_bodies | error_bodies | json_values,
    st.booleans(),
    st.sampled_from([None, 0, 2]),
)
bodies = (
    json_bodies
    | st.binary(max_size=2048)
    | st.text(max_size=500).map(lambda t: t.encode())
    | st.sampled_from(
        [b"", b"null", b"[" * 5000 + b"]" * 5000, b'{"status": "FINISHED"', b"\xef\xbb\xbf{}"]
    )
)
replies = st.builds(
    Raw,
    status=st.sampled_from([200, 200, 200, 400, 401, 403, 404, 429, 500, 502, 503])
    | st.integers(200, 599).filter(lambda s: s not in (204, 205, 304)),
    content_type=st.sampled_from(
        ["application/json", "text/html", "text/plain; charset=latin-1", "application/octet-stream"]
    ),
    body=bodies,
    usage=st.none()
    | st.sampled_from(['{"call_count": 95, "total_time": 10, "total_cputime": 10}', "{}", "nan"])
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)


def test_fuzzed_api_replies_always_end_in_the_right_final_state(fuzz: FuzzHarness) -> None:
    before = fuzz.run(fuzz.poll(Raw(200, "application/json", b'{"status": "FINISHED"}')))
    assert before is not None and before.status == "FINISHED"

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(raw=replies)
    def one_reply(raw: Raw) -> None:
        r = fuzz.run(fuzz.poll(raw))
        cid = str(880_000 + fuzz.counter)
        assert r is not None and r.final, f"not final after 15 s: {r}"
        assert r.status in FINAL_STATES
        status, error_message = expected_outcome(cid, raw)
        assert r.status == status, (r.status, r.last_error, r.last_api_status)
        if status == "ERROR":
            assert r.error_message == error_message
        assert r.last_error is None or len(r.last_error) < 2000
        assert fuzz.server.calls[cid] == 1
        assert fuzz.worker_alive

    one_reply()
    after = fuzz.run(fuzz.poll(Raw(200, "application/json", b'{"status": "PUBLISHED", "id": "1"}')))
    assert after is not None and after.status == "PUBLISHED"  # the worker still works


def test_reply_with_a_lone_surrogate_still_ends_final(fuzz: FuzzHarness) -> None:
    for body, http in (
        (b'{"status": "\\ud800"}', 200),
        (b'{"status": "ERROR", "error_message": "\\udcff"}', 200),
        (b'{"error": {"code": 100, "error_subcode": 33, "message": "\\ud800 x"}}', 400),
    ):
        r = fuzz.run(fuzz.poll(Raw(http, "application/json", body), timeout=5))
        assert r is not None and r.final, (body, r)


def test_a_large_valid_reply_is_read_whole(fuzz: FuzzHarness) -> None:
    body = json.dumps({"status": "FINISHED", "id": "1", "padding": "x" * 300_000}).encode()
    r = fuzz.run(fuzz.poll(Raw(200, "application/json", body)))
    assert r is not None and r.status == "FINISHED", (r.status if r else None, r and r.last_error)
