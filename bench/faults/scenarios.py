"""The long run's containers: their scripted stories, the run's configuration, what the workers'
logs say of each one, and the verdict on each one.

Each container's id says which script the simulator answers it with (``Scenario.prefix``), so
every container has one known expected final state. ``classify_container`` holds a container's
result hash, its answers (``Ledger``) and its log facts against it: right, explained (a
TIMED_OUT the faults account for, with the proof), wrong, late (the machine was overloaded) or
lost. ``starved_probability`` is the model of how many explained ones to expect.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.faults.invariants import call_bound, is_throttled
from bench.faults.ledger import Answered
from simulator import DEFAULT_FAULT_KINDS
from worker.core.decisions import Schedule
from worker.core.result import PollResult

ACCOUNT_BASE = 910_000_000_000


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scripted story; ``code`` is the id prefix that selects it in the simulator."""

    name: str
    code: str
    steps: tuple[str, ...]
    expect: str
    error_message: str | None = None
    error_kind: str | None = None
    weight: int = 1

    @property
    def prefix(self) -> str:
        return "7" + self.code

    @property
    def expect_label(self) -> str:
        return f"{self.expect}:{self.error_message}" if self.error_message else self.expect

    @property
    def decisive_label(self) -> str | None:
        """The simulator's label of the answer that settles the container (None: none does)."""
        return None if self.expect == "TIMED_OUT" else self.steps[-1]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("finished", "01", ("FINISHED",), "FINISHED", weight=4),
    Scenario("finished_2nd", "02", ("IN_PROGRESS", "FINISHED"), "FINISHED", weight=2),
    Scenario(
        "error",
        "03",
        ("ERROR:FAILED_DOWNLOADING_VIDEO",),
        "ERROR",
        error_message="FAILED_DOWNLOADING_VIDEO",
        weight=2,
    ),
    Scenario(
        "error_2nd",
        "04",
        ("IN_PROGRESS", "ERROR:INVALID_ASPEC_RATIO"),
        "ERROR",
        error_message="INVALID_ASPEC_RATIO",
    ),
    Scenario(
        "error_new_reason",
        "05",
        ("ERROR:SOMETHING_META_ADDED_LATER",),
        "ERROR",
        error_message="SOMETHING_META_ADDED_LATER",
    ),
    Scenario("expired", "06", ("EXPIRED",), "EXPIRED", weight=2),
    Scenario("published", "07", ("PUBLISHED",), "PUBLISHED"),
    Scenario("published_2nd", "08", ("IN_PROGRESS", "PUBLISHED"), "PUBLISHED"),
    Scenario("in_progress_forever", "09", ("IN_PROGRESS",), "TIMED_OUT", weight=2),
    Scenario("unknown_status_forever", "10", ("STATUS:SCHEDULED",), "TIMED_OUT"),
    Scenario("notfound", "11", ("notfound",), "FAILED", error_kind="not_found", weight=2),
    Scenario("permission", "12", ("permission",), "FAILED", error_kind="permission"),
)
_CYCLE: tuple[Scenario, ...] = tuple(sc for sc in SCENARIOS for _ in range(sc.weight))
_BY_CODE = {sc.code: sc for sc in SCENARIOS}
BY_NAME = {sc.name: sc for sc in SCENARIOS}


def scenario_of_index(i: int) -> Scenario:
    """A deterministic mix: the weighted cycle of SCENARIOS, in order."""
    return _CYCLE[i % len(_CYCLE)]


def container_id(i: int) -> str:
    return f"{scenario_of_index(i).prefix}{i:010d}"


def scenario_of(cid: str) -> Scenario:
    return _BY_CODE[cid[1:3]]


def account_of(i: int, accounts: int) -> str | None:
    # Interleaved. (Blocks of one account enqueued together stay in lockstep: one throttled
    # answer then postpones all its siblings by an interval, again and again.)
    return str(ACCOUNT_BASE + i % accounts) if accounts > 0 else None


def via_intake(i: int, share: float) -> bool:
    return math.floor((i + 1) * share) > math.floor(i * share)


# ----- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRunConfig:
    containers: int = 10_000
    workers: int = 3
    kill_every: float = 5.0
    fault_rate: float = 0.2
    interval: float = 10.0
    window: float = 50.0
    seed: int = 1
    rate: float = 100.0
    intake_share: float = 0.25
    accounts: int = 20
    http_timeout: float = 1.0
    job_timeout: float = 2.0
    max_jobs: int = 50
    throttle_backoff: float = 0.1
    redis_restart_at: float | None = None  # seconds after the start; None: mid-enqueue; <0: none
    appendfsync: str = "always"
    progress_every: float = 5.0
    workdir: Path | None = None
    keep: bool = False

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.interval, self.window)

    @property
    def max_checks(self) -> int:
        return self.schedule.max_checks

    @property
    def slow_seconds(self) -> float:
        # A random "slow" answer must be a timeout for the worker, by a clear margin.
        return 2.0 * self.http_timeout

    @property
    def throttle_max_delay(self) -> float:
        # Production: 900 s for a 300 s window; the same ratio here.
        return 3 * self.window

    @property
    def enqueue_seconds(self) -> float:
        return self.containers / self.rate

    @property
    def redis_restart_time(self) -> float | None:
        if self.redis_restart_at is None:
            return max(1.0, self.enqueue_seconds / 2)
        return self.redis_restart_at if self.redis_restart_at >= 0 else None

    @property
    def reconcile_grace(self) -> float:
        # worker.runtime.app: a poll whose job vanished is settled after deadline + this.
        return self.job_timeout + self.interval + 30.0

    def describe(self, rerun_after_kill: float) -> str:
        restart = self.redis_restart_time
        return "\n".join(
            [
                f"  containers {self.containers} at {self.rate:g}/s "
                f"({self.intake_share:.0%} through the intake stream), {self.accounts} accounts,"
                f" seed {self.seed}",
                f"  workers {self.workers} (WORKER_MAX_JOBS {self.max_jobs}), one SIGKILLed and "
                + (f"restarted every {self.kill_every:g} s" if self.kill_every > 0 else "never"),
                f"  schedule: a check every {self.interval:g} s for {self.window:g} s "
                f"(at most {self.max_checks} checks)",
                f"  faults: {self.fault_rate:.0%} of status calls, kinds "
                f"{','.join(DEFAULT_FAULT_KINDS)}; slow = {self.slow_seconds:g} s "
                f"> HTTP_TIMEOUT_SECONDS {self.http_timeout:g}",
                f"  JOB_TIMEOUT_SECONDS {self.job_timeout:g}; a SIGKILLed check runs again after "
                f"{rerun_after_kill:g} s at most (LEASE_SECONDS: renewed while a run works)",
                f"  throttling: THROTTLE_BACKOFF_SECONDS {self.throttle_backoff:g}, "
                f"THROTTLE_MAX_DELAY_SECONDS {self.throttle_max_delay:g}, pacing off",
                f"  redis: appendonly yes, appendfsync {self.appendfsync}, SIGKILLed and restarted "
                + (f"at t={restart:g} s" if restart is not None else "never"),
            ]
        )


# ----- the starvation model ------------------------------------------------------------------


def starved_probability(
    steps: Sequence[str], *, fault_rate: float, kinds: Sequence[str], checks: int
) -> float:
    """Model: the chance that no check of a container ever sees its decisive answer.

    Random faults are independent per call. A throttled answer does not spend a check; a dropped
    connection is re-sent once by aiohttp within the same check; a slow answer is a timeout but
    moves the script on; other faults spend the check. Kills and restarts are left out.
    """
    if not kinds or fault_rate <= 0:
        return 0.0
    share = fault_rate / len(kinds)
    p_slow = share * sum(k == "slow" for k in kinds)
    p_drop = share * sum(k == "drop" for k in kinds)
    p_thr = share * sum(is_throttled(k) for k in kinds)
    p_ok = 1.0 - fault_rate
    deliver = p_ok + p_drop * p_ok
    consume = p_slow + p_drop * p_slow
    not_spent = p_thr + p_drop * p_thr
    spent = 1.0 - not_spent
    deliver, consume = deliver / spent, consume / spent
    fail = 1.0 - deliver - consume
    last = len(steps) - 1
    mass = [0.0] * (last + 1)
    mass[0] = 1.0
    for _ in range(checks):
        nxt = [0.0] * (last + 1)
        for cursor, p in enumerate(mass):
            if cursor < last:
                nxt[cursor + 1] += p * (deliver + consume)
            else:
                nxt[cursor] += p * consume  # delivery at the last step ends the story
            nxt[cursor] += p * fail
        mass = nxt
    return sum(mass)


# ----- the workers' logs -------------------------------------------------------------------


@dataclass
class LogFacts:
    """What the workers' JSON logs say about one container."""

    tries: set[int] = field(default_factory=set)
    saw: set[str] = field(default_factory=set)  # statuses a check recorded from an answer
    reconciled: bool = False

    @property
    def unlogged_runs(self) -> int:
        """Runs of the job (arq's job_try) that never logged an outcome: killed mid-check."""
        return max(self.tries, default=0) - len(self.tries)


_RUN_MESSAGES = (
    "checked",
    "final state",
    "check outcome not written",
    "run no longer owns its poll; outcome dropped",
)


def parse_worker_logs(paths: Iterable[Path]) -> dict[str, LogFacts]:
    facts: defaultdict[str, LogFacts] = defaultdict(LogFacts)
    for path in paths:
        with path.open("rb") as f:
            for raw in f:
                if b'"container_id"' not in raw:
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut by SIGKILL
                cid = line.get("container_id")
                msg = str(line.get("msg", ""))
                if not isinstance(cid, str):
                    continue
                if msg.startswith("poll without a job resumed"):
                    facts[cid].reconciled = True
                    continue
                if not msg.startswith(_RUN_MESSAGES):
                    continue
                job_try = line.get("job_try")
                if isinstance(job_try, int):
                    facts[cid].tries.add(job_try)
                status = line.get("status")
                if isinstance(status, str) and ("error" not in line or status == "FAILED"):
                    facts[cid].saw.add(status)
    return facts


# ----- the verdict -------------------------------------------------------------------------


def run_call_bound(cfg: FaultRunConfig, answers: Sequence[Answered], facts: LogFacts | None) -> int:
    """The long run's ``call_bound``: ``max_checks`` spent checks, + 1 per throttled answer
    and per dropped connection, + 1 per run SIGKILLed after its call but before recording it
    (it is run again and calls again: ``LogFacts.unlogged_runs``)."""
    return call_bound(cfg.max_checks, answers, disrupted=facts.unlogged_runs if facts else 0)


def _matches(sc: Scenario, r: PollResult) -> bool:
    if r.status != sc.expect:
        return False
    if sc.error_message is not None and r.error_message != sc.error_message:
        return False
    if sc.error_kind is not None and r.last_error_kind != sc.error_kind:
        return False
    return not (r.last_error and "disappeared" in r.last_error)


def classify_container(
    cfg: FaultRunConfig,
    cid: str,
    result: PollResult | None,
    answers: Sequence[Answered],
    facts: LogFacts | None,
) -> tuple[str, str]:
    """("right" | "explained" | "wrong" | "late" | "lost", detail)."""
    sc = scenario_of(cid)
    if result is None or not result.final:
        state = "no result hash" if result is None else f"{result.status}, checks {result.checks}"
        return "lost", f"{cid} {sc.name}: {state}"
    if _matches(sc, result):
        return "right", ""
    detail = (
        f"{cid} {sc.name}: expected {sc.expect_label}, got {result.status}"
        f"{':' + result.error_message if result.error_message else ''} (checks {result.checks}, "
        f"last_error {result.last_error!r}; answers {' '.join(a.answer for a in answers)})"
    )
    decisive = sc.decisive_label
    if result.status != "TIMED_OUT" or decisive is None:
        return "wrong", detail
    if result.last_error and "disappeared" in result.last_error:
        return "wrong", detail + " - its job was lost"
    if facts is not None and sc.expect in facts.saw:
        return "wrong", detail + " - a check had seen the expected answer"
    prompt = [a for a in answers if a.answer == decisive and a.delay < cfg.http_timeout]
    killed = facts is not None and facts.unlogged_runs > 0
    if prompt and killed:
        return "explained", "crash-starved: the run that got it was SIGKILLed, re-run too late"
    if prompt:
        # Answered in time, no run killed, and still no check recorded it: a timeout under load
        # or a client that misread the answer; either way not something to explain away.
        return "wrong", detail + " - answered in time, but no check recorded it"
    if result.window_delay >= cfg.throttle_max_delay - 1e-6:
        return "explained", "throttle-starved: its account's pauses used up the window's extension"
    if result.checks >= cfg.max_checks:
        return "explained", "fault-starved: no answer carried it in time, in all its checks"
    if killed:
        return "explained", "crash-starved: a SIGKILLed run's re-run found the window closed"
    # Fewer checks than the window allows, and no kill or throttling to account for it: the
    # checks started too late (an overloaded machine). The service behaved as designed, but the
    # run proves nothing about such a container, so it fails.
    return "late", detail + " - the window closed before its checks were done"
