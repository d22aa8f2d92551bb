"""The fault run's accounting (bench/faults/scenarios.py): a bench that cannot fail proves nothing.

Pure: scenario ids, the classification of each container, the call bound, the worker-log parser and
the starvation model. The run itself: tests/system/test_fault_run.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.faults.scenarios import (
    SCENARIOS,
    FaultRunConfig,
    LogFacts,
    classify_container,
    container_id,
    parse_worker_logs,
    scenario_of,
    scenario_of_index,
    starved_probability,
)
from bench.faults.scenarios import run_call_bound as call_bound
from worker.core.result import PollResult

CFG = FaultRunConfig(containers=300, interval=6.0, window=30.0)


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer as the accounting reads it (``bench.faults.ledger.Answered``)."""

    answer: str
    delay: float


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
