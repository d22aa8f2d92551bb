"""The planner's side of issue 20's fixes, pure: a throttled publish, an unacknowledged claim,
the give-up after an uncertain publish, a poll's own window, and the run deadline's hold.

Each test fails with its fix reverted (the same reverts as ``bench/model/mutants``)."""

from __future__ import annotations

import asyncio

from api_client.errors import GraphAPIError, RequestTimeoutError
from api_client.models import ContainerStatus
from worker.core.decisions import Schedule
from worker.core.errors import GaveUpError
from worker.core.planner import (
    CallPublish,
    CallStatus,
    Policy,
    Record,
    TokenState,
    after_publish,
    after_status,
    given_up,
    plan_run,
    publish_unacknowledged,
    schedule_of,
)
from worker.core.publishing import PublishStatus, PublishVerdict, judge_publish
from worker.core.result import PollResult, stamp
from worker.core.states import State
from worker.store.queue import RunDeadline

POLICY = Policy(
    schedule=Schedule(interval=1.0, window=5.0),
    max_delay=10.0,
    publish_grace=0.5,
    publish_max_attempts=3,
)
T0 = 1_700_000_000.0


def poll(window: float = 5.0, **fields: object) -> PollResult:
    h: dict[bytes | str, bytes | str] = {
        "container_id": "1",
        "status": State.QUEUED,
        "final": "0",
        "enqueued_at": stamp(T0),
        "deadline_at": stamp(T0 + window),
        "generation": "g1",
        "next_check_at": stamp(T0),
    }
    for k, v in fields.items():
        h[k] = "1" if v is True else str(v)
    return PollResult.from_hash(h)


def finished_publish_due(**fields: object) -> PollResult:
    due: dict[str, object] = {
        "status": State.FINISHED,
        "last_api_status": State.FINISHED,
        "checks": 2,
        "publish": True,
        "publish_status": PublishStatus.PENDING,
    }
    return poll(5.0, **{**due, **fields})


THROTTLED = GraphAPIError("Application request limit reached", code=4, http_status=400)


def test_a_throttled_publish_answer_is_its_own_verdict() -> None:
    assert judge_publish(THROTTLED) is PublishVerdict.THROTTLED


def test_a_throttled_publish_costs_no_attempt_and_waits_for_the_pause() -> None:
    r = finished_publish_due(publish_attempts=2)
    rec = after_publish(
        r,
        PublishVerdict.THROTTLED,
        media_id=None,
        error=THROTTLED,
        now=T0 + 3,
        policy=POLICY,
        paused_until=T0 + 60,
    )
    assert not rec.decision.final
    assert rec.decision.next_check_at == T0 + 60
    # The claim counted the attempt; the record gives it back.
    assert rec.changes.publish_attempts == 2
    assert rec.changes.publish_status == PublishStatus.PENDING
    assert rec.decision.error is not None and rec.decision.error.kind == "throttled"


def test_an_unacknowledged_claim_is_given_back_and_the_status_read_first() -> None:
    r = finished_publish_due()
    rec = publish_unacknowledged(r, acked=0, needed=1, now=T0 + 3, policy=POLICY)
    assert not rec.decision.final
    assert rec.changes.publish_status == PublishStatus.PENDING
    assert rec.changes.publish_verify is True
    assert "0 of 1" in str(rec.decision.error)
    # With the verify flag the next run reads the status (it does not publish) ...
    verify = finished_publish_due(publish_verify=True, publish_attempts=1)
    plan = plan_run(verify, throttled_until=0.0, token=TokenState.OK, now=T0 + 4, policy=POLICY)
    assert isinstance(plan, CallStatus)
    # ... even past the window, and a FINISHED answer makes the publish due at once.
    late = plan_run(verify, throttled_until=0.0, token=TokenState.OK, now=T0 + 60, policy=POLICY)
    assert isinstance(late, CallStatus)
    after = after_status(
        verify, ContainerStatus("1", State.FINISHED), now=T0 + 4, paused_until=0.0, policy=POLICY
    )
    assert after.changes.publish_verify is False and after.decision.next_check_at == T0 + 4
    assert not after.decision.final
    # Once cleared, the publish is due.
    cleared = finished_publish_due(publish_attempts=1)
    due = plan_run(cleared, throttled_until=0.0, token=TokenState.OK, now=T0 + 4, policy=POLICY)
    assert isinstance(due, CallPublish)


def test_unacknowledged_claims_end_publish_failed_after_the_attempts() -> None:
    r = finished_publish_due(publish_attempts=2)
    rec = publish_unacknowledged(r, acked=0, needed=2, now=T0 + 3, policy=POLICY)
    assert rec.decision.final and rec.decision.status == State.PUBLISH_FAILED
    assert rec.changes.publish_status == PublishStatus.FAILED


def test_the_give_up_after_an_ambiguous_publish_is_unconfirmed() -> None:
    why = GaveUpError("the check job was given up: 500 runs did not settle it")
    unconfirmed = finished_publish_due(publish_status=PublishStatus.UNCONFIRMED)
    rec = given_up(unconfirmed, why)
    assert rec.decision.status == State.PUBLISH_UNCONFIRMED
    in_flight = finished_publish_due(publish_status=PublishStatus.IN_FLIGHT)
    rec = given_up(in_flight, why)
    assert rec.decision.status == State.PUBLISH_UNCONFIRMED
    assert rec.changes.publish_status == PublishStatus.UNCONFIRMED
    # Without a publish it is what it always was.
    plain = given_up(poll(status=State.IN_PROGRESS, checks=3), why)
    assert plain.decision.status == State.TIMED_OUT and "given up" in str(plain.decision.error)


def test_a_poll_gets_the_checks_its_own_window_holds() -> None:
    long = poll(window=12.0, status=State.IN_PROGRESS, checks=6)
    assert schedule_of(long, POLICY).max_checks == 13
    # The workers' window (5 s) would allow 6 checks; this poll's allows 13, and its deadline
    # is ahead: the seventh check is due, not TIMED_OUT.
    plan = plan_run(long, throttled_until=0.0, token=TokenState.OK, now=T0 + 6.5, policy=POLICY)
    assert isinstance(plan, CallStatus)
    rec = after_status(
        long, ContainerStatus("1", State.IN_PROGRESS), now=T0 + 6.5, paused_until=0.0, policy=POLICY
    )
    assert isinstance(rec, Record) and not rec.decision.final
    short = poll(window=2.0)
    assert schedule_of(short, POLICY).max_checks == 3


def test_an_ambiguous_publish_is_not_cut_off_by_the_hold() -> None:
    # judge_publish is unchanged for the ambiguous classes.
    assert judge_publish(RequestTimeoutError("timeout")) is PublishVerdict.UNCONFIRMED


def test_a_hold_keeps_the_run_deadline_off_until_it_ends() -> None:
    async def main() -> tuple[bool, bool]:
        deadline = RunDeadline()
        held_through = False
        timed_out = False
        try:
            async with asyncio.timeout(10) as timeout:
                loop_now = asyncio.get_running_loop().time()
                deadline.bind(timeout, lease_end=loop_now + 30)
                async with deadline.hold():
                    deadline.expire()  # the run's time is up while it records
                    await asyncio.sleep(0.05)
                    held_through = True
                await asyncio.sleep(1)  # after the hold, the expiry fires
        except TimeoutError:
            timed_out = True
        return held_through, timed_out

    assert asyncio.run(main()) == (True, True)


def test_without_a_hold_the_deadline_fires_at_once() -> None:
    async def main() -> bool:
        deadline = RunDeadline()
        try:
            async with asyncio.timeout(10) as timeout:
                deadline.bind(timeout, lease_end=asyncio.get_running_loop().time() + 30)
                deadline.expire()
                await asyncio.sleep(0.05)
        except TimeoutError:
            return True
        return False

    assert asyncio.run(main())


def test_the_replica_memory_outlasts_a_partition_not_a_removal() -> None:
    from worker.store.replicas import MEMORY_SECONDS, remembered

    # Seen with one replica a minute ago, none connected now (cut off): still wait for one.
    assert remembered(0, 1, seen_at=T0, now=T0 + 60) == (1, False)
    # More connected than remembered: wait for them all, and remember it.
    assert remembered(2, 1, seen_at=T0, now=T0 + 60) == (2, True)
    # Gone for longer than the memory: removed for good.
    assert remembered(0, 1, seen_at=T0, now=T0 + MEMORY_SECONDS + 1) == (0, True)


def test_a_window_read_back_from_its_stamps_keeps_every_check() -> None:
    # 1796626393.590 - 1796626392.390 is 1.1999998 in floating point: 4 checks of 0.3 s, not 5.
    h: dict[bytes | str, bytes | str] = {
        "container_id": "1",
        "status": State.IN_PROGRESS,
        "final": "0",
        "enqueued_at": "1796626392.390",
        "deadline_at": "1796626393.590",
        "generation": "g1",
    }
    r = PollResult.from_hash(h)
    policy = Policy(
        schedule=Schedule(interval=0.3, window=1.2),
        max_delay=1.0,
        publish_grace=0.1,
        publish_max_attempts=3,
    )
    assert schedule_of(r, policy).max_checks == 5
