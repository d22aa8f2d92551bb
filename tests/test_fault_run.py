"""Nothing is lost: the fault run (bench/fault_run.py) at CI size, and its accounting.

The end-to-end test runs the same code as ``python -m bench.fault_run``: its own redis-server
(AOF on, SIGKILLed and restarted once), three worker processes of which one is SIGKILLed every few
seconds, the simulator answering 20% of status calls with a random fault, and fails on any lost or
wrong container, any duplicate or missing final event and any container over the call bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.fault_run import (
    SCENARIOS,
    Answer,
    FaultRunConfig,
    LogFacts,
    call_bound,
    classify_container,
    container_id,
    parse_worker_logs,
    run_fault_run,
    scenario_of,
    scenario_of_index,
    starved_probability,
)
from config import Settings
from simulator import SimulatorState, run_simulator
from simulator.state import Reply
from tests.conftest import (
    RedisServer,
    make_settings,
    running_worker,
    start_redis,
    stop_redis,
    wait_until,
)
from worker import enqueue, enqueue_many, get_result
from worker.core.result import PollResult
from worker.store.connections import open_redis

CFG = FaultRunConfig(containers=300, interval=6.0, window=30.0)


@contextlib.contextmanager
def short_failure() -> Iterator[None]:
    """Fail with one line instead of redis-py's and arq's deep exception chains: rendering those
    can trip CPython 3.11.7's AST recursion bug (gh-106905), crashing pytest on a later test."""
    try:
        yield
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)


async def test_fault_run_ci_sized_loses_nothing(tmp_path: Path) -> None:
    cfg = FaultRunConfig(
        containers=300,
        workers=3,
        kill_every=3.0,
        fault_rate=0.2,
        interval=6.0,
        window=30.0,
        rate=40.0,
        accounts=5,
        seed=7,
        workdir=tmp_path / "run",
    )
    lines: list[str] = []
    report = await run_fault_run(cfg, say=lines.append)
    text = "\n".join(lines) + report.render()
    assert report.lost == [], text
    assert report.wrong == [], text
    assert report.late == [], text  # checks started too late: the machine was overloaded
    assert report.duplicate_events == [], text
    assert report.missing_events == [] and report.stray_events == 0, text
    assert report.over_bound == [], text
    assert report.dead_letters == 0, text
    assert report.right + len(report.explained) == cfg.containers, text
    # Every explained TIMED_OUT is rare (model: ~0.01 per run); a handful means a regression.
    assert len(report.explained) <= 2, text
    # The run really was hostile: kills, a Redis crash, faults, both doors.
    assert report.kills >= 5 and report.redis_restarts == 1, text
    assert report.intake_written == 75 and report.enqueue_outcomes["enqueued"] == 225, text
    assert report.calls_total > cfg.containers and report.calls_max > cfg.max_checks, text
    assert report.passed, text
    assert report.inflight_left == 0 and report.queue_left == 0 and report.intake_left == 0, text


# ----- the accounting itself: a bench that cannot fail proves nothing ---------------------


def result(cid: str, status: str, **fields: str) -> PollResult:
    raw: dict[bytes | str, bytes | str] = {
        "container_id": cid,
        "status": status,
        "final": "1",
        "checks": "3",
        "generation": "g",
    }
    raw.update(fields)
    return PollResult.from_hash(raw)


def by_name(name: str) -> str:
    i = next(i for i in range(100) if scenario_of_index(i).name == name)
    return container_id(i)


def test_ids_carry_their_scenario_and_the_mix_is_deterministic() -> None:
    ids = [container_id(i) for i in range(200)]
    assert len(set(ids)) == 200 and all(cid.isdigit() and len(cid) <= 32 for cid in ids)
    assert [scenario_of(cid) for cid in ids] == [scenario_of_index(i) for i in range(200)]
    weights = sum(sc.weight for sc in SCENARIOS)
    counts = {sc.name: 0 for sc in SCENARIOS}
    for i in range(weights * 10):
        counts[scenario_of_index(i).name] += 1
    assert counts == {sc.name: sc.weight * 10 for sc in SCENARIOS}


def test_classification_catches_wrong_lost_and_unexplained() -> None:
    fin = by_name("finished")
    ok = [Answer("FINISHED", 0.0)]
    assert classify_container(CFG, fin, result(fin, "FINISHED"), ok, None)[0] == "right"
    assert classify_container(CFG, fin, None, ok, None)[0] == "lost"
    queued = result(fin, "QUEUED", final="0")
    assert classify_container(CFG, fin, queued, ok, None)[0] == "lost"
    assert classify_container(CFG, fin, result(fin, "ERROR"), ok, None)[0] == "wrong"
    # TIMED_OUT although the API answered FINISHED in time and no run was killed: wrong.
    no_kill = LogFacts({1, 2})
    assert classify_container(CFG, fin, result(fin, "TIMED_OUT"), ok, no_kill)[0] == "wrong"
    # ... and wrong too when a logged check had seen it.
    seen = LogFacts({1}, {"FINISHED"})
    assert classify_container(CFG, fin, result(fin, "TIMED_OUT"), ok, seen)[0] == "wrong"
    # A job the reconciler had to settle is never right, even for a TIMED_OUT script.
    forever = by_name("in_progress_forever")
    lost_job = result(forever, "TIMED_OUT", last_error="the check job disappeared before ...")
    assert classify_container(CFG, forever, lost_job, [], None)[0] == "wrong"
    assert classify_container(CFG, forever, result(forever, "TIMED_OUT"), [], None)[0] == "right"
    err = by_name("error")
    other = result(err, "ERROR", error_message="UNKNOWN")
    assert classify_container(CFG, err, other, [], None)[0] == "wrong"
    nf = by_name("notfound")
    token_failure = result(nf, "FAILED", last_error_kind="token")
    assert classify_container(CFG, nf, token_failure, [], None)[0] == "wrong"
    right_failure = result(nf, "FAILED", last_error_kind="not_found")
    assert classify_container(CFG, nf, right_failure, [], None)[0] == "right"


def test_explained_timeouts_need_proof() -> None:
    fin = by_name("finished")
    faults = [Answer("500", 0.0), Answer("FINISHED", 2.0), Answer("garbage", 0.0)] * 2
    all_checks = result(fin, "TIMED_OUT", checks="6")
    verdict, why = classify_container(CFG, fin, all_checks, faults, LogFacts({1, 2, 3}))
    assert (verdict, why.split(":")[0]) == ("explained", "fault-starved")
    # The answer came in time, but to a run that was SIGKILLed (try 2 never logged).
    killed = LogFacts({1, 3})
    few = result(fin, "TIMED_OUT", checks="2")
    verdict, why = classify_container(CFG, fin, few, [Answer("FINISHED", 0.0)], killed)
    assert (verdict, why.split(":")[0]) == ("explained", "crash-starved")
    verdict, why = classify_container(CFG, fin, few, faults[:2], killed)
    assert (verdict, why.split(":")[0]) == ("explained", "crash-starved")
    throttled = result(fin, "TIMED_OUT", checks="2", window_delay=str(CFG.throttle_max_delay))
    verdict, why = classify_container(CFG, fin, throttled, faults[:2], LogFacts({1, 2}))
    assert (verdict, why.split(":")[0]) == ("explained", "throttle-starved")
    # Fewer checks than the window allows and nothing to account for it: overload, a failure.
    verdict, _ = classify_container(CFG, fin, few, faults[:2], LogFacts({1, 2}))
    assert verdict == "late"


def test_call_bound_counts_only_documented_extras() -> None:
    answers = [Answer("IN_PROGRESS", 0)] * 6 + [Answer("drop", 0), Answer("429", 0)]
    assert call_bound(CFG, answers, None) == 6 + 1 + 1
    assert call_bound(CFG, answers, LogFacts({1, 2, 4})) == 6 + 1 + 1 + 1
    assert call_bound(CFG, [Answer("IN_PROGRESS", 0)] * 7, None) == 6  # a 7th call is over


def test_worker_log_parsing(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text(
        '{"msg": "checked", "container_id": "1", "job_try": 1, "status": "IN_PROGRESS"}\n'
        '{"msg": "checked", "container_id": "1", "job_try": 3, "status": "IN_PROGRESS",'
        ' "error": "HTTP 500"}\n'
        '{"msg": "final state", "container_id": "2", "job_try": 1, "status": "FAILED",'
        ' "error": "100/33"}\n'
        '{"msg": "poll without a job resumed (resumed)", "container_id": "3"}\n'
        '{"msg": "checked", "container_id": "1", "job_tr'  # cut by SIGKILL
    )
    facts = parse_worker_logs([log])
    assert facts["1"].tries == {1, 3} and facts["1"].unlogged_runs == 1
    assert facts["1"].saw == {"IN_PROGRESS"}
    assert facts["2"].saw == {"FAILED"} and facts["3"].reconciled


def test_starvation_model() -> None:
    one = starved_probability(["FINISHED"], fault_rate=0.2, kinds=["500"], checks=6)
    assert one == pytest.approx(0.2**6)
    two = starved_probability(["IN_PROGRESS", "FINISHED"], fault_rate=0.2, kinds=["500"], checks=6)
    assert two == pytest.approx(0.2**6 + 6 * 0.8 * 0.2**5)
    # Throttling never spends a check; a dropped connection is re-sent once.
    assert starved_probability(["FINISHED"], fault_rate=0.2, kinds=["429"], checks=6) == 0
    drop = starved_probability(["FINISHED"], fault_rate=0.2, kinds=["drop"], checks=6)
    assert drop == pytest.approx((0.2 * 0.2) ** 6)


# ----- found by the fault run --------------------------------------------------------------


async def test_worker_redis_client_waits_for_a_restarting_redis(tmp_path: Path) -> None:
    servers = [start_redis(tmp_path / "redis", appendonly=True)]
    settings = make_settings(servers[0].url, "http://127.0.0.1:9/v1.0")
    pool = open_redis(settings, worker=True)
    try:
        assert await pool.ping()
        stop_redis(servers[0])
        await pool.connection_pool.disconnect()  # as after the connections saw Redis go away

        async def restart() -> None:
            await asyncio.sleep(0.5)
            again = await asyncio.to_thread(
                start_redis, tmp_path / "redis", appendonly=True, port=servers[0].port
            )
            servers.append(again)

        back = asyncio.create_task(restart())
        try:
            with short_failure():
                # The worker's client rides out a short restart (about 2.5 s of back-off).
                assert await pool.ping()
        finally:
            await back
    finally:
        await pool.aclose()
        for server in servers:
            stop_redis(server)


class CrashRedisOnCall(SimulatorState):
    """Answers status calls normally, but takes Redis down at the first one."""

    def __init__(self, on_first_call: Callable[[], None]) -> None:
        super().__init__(scripts={"8800*": ["FINISHED"]})
        self.on_first_call: Callable[[], None] | None = on_first_call

    def handle_status(self, container_id: str, token: str | None) -> Reply:
        reply = super().handle_status(container_id, token)
        if self.on_first_call is not None:
            hook, self.on_first_call = self.on_first_call, None
            hook()
        return reply


async def test_a_check_that_meets_a_redis_restart_still_records_its_answer(
    tmp_path: Path,
) -> None:
    servers = [start_redis(tmp_path / "redis", appendonly=True)]
    background: list[asyncio.Task[None]] = []

    async def restart_soon() -> None:
        await asyncio.sleep(0.5)
        again = await asyncio.to_thread(
            start_redis, tmp_path / "redis", appendonly=True, port=servers[0].port
        )
        servers.append(again)

    def crash() -> None:
        stop_redis(servers[0])  # Redis goes away while the check holds the API's answer
        background.append(asyncio.get_running_loop().create_task(restart_soon()))

    state = CrashRedisOnCall(crash)
    try:
        async with run_simulator(port=0, state=state) as sim:
            settings = make_settings(servers[0].url, sim.base_url, poll_max_seconds=30.0)
            redis = Redis.from_url(servers[0].url)
            try:
                await enqueue(redis, "880001", settings=settings)
                with short_failure():
                    await _finish_880001(redis, settings)
            finally:
                await redis.aclose()
    finally:
        for task in background:
            await task
        for server in servers:
            stop_redis(server)


async def _finish_880001(redis: Redis, settings: Settings) -> None:
    async with running_worker(settings) as worker:

        async def finished() -> bool:
            with contextlib.suppress(RedisError, OSError):
                r = await get_result(redis, "880001", settings=settings)
                return r is not None and r.status == "FINISHED"
            return False

        await wait_until(finished, timeout=15, interval=0.2)
        assert worker.alive


async def test_worker_survives_connections_dropped_while_it_starts_jobs(
    redis_server: RedisServer,
) -> None:
    """A Redis restart (or a failover, or a proxy dropping idle connections) can cut any
    connection at any moment: while a job is claimed (stock arq WATCHes then), while arq reads
    or re-schedules a job, during a new connection's handshake. The worker must carry on."""
    async with run_simulator(port=0) as sim:
        sim.state.set_script("8810*", ["IN_PROGRESS"])
        settings = make_settings(
            redis_server.url, sim.base_url, poll_interval_seconds=0.05, poll_max_seconds=600.0
        )
        redis = Redis.from_url(redis_server.url)
        await redis.flushall()
        kill = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        try:
            await enqueue_many(redis, [f"8810{i:05d}" for i in range(2000)], settings=settings)
            with short_failure():
                async with running_worker(settings) as worker:
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 8
                    while loop.time() < deadline:
                        # Drop every other client's connection, as a restarting Redis would.
                        await redis.execute_command(*kill)
                        await asyncio.sleep(0.02)
                        if not worker.alive:
                            raise AssertionError("worker main loop ended")
                    # And it still works: a new container is checked and settled.
                    sim.state.set_script("8820001", ["FINISHED"])
                    await enqueue_many(redis, ["8820001"], settings=settings)

                    async def settled() -> bool:
                        r = await get_result(redis, "8820001", settings=settings)
                        return r is not None and r.status == "FINISHED"

                    await wait_until(settled, timeout=15, interval=0.1)
                    assert worker.alive
        finally:
            await redis.aclose()
