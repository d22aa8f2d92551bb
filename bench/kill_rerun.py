"""SIGKILL to re-run: how long a killed worker's checks wait before they run again (issue 22).

    .venv/bin/python -m bench.kill_rerun [--containers 20] [--kills 3] [--bound 10] [--keep]

Real ``threads-poller worker`` processes with the shipped lease and timeouts (``LEASE_SECONDS``,
``JOB_TIMEOUT_SECONDS``, ``HTTP_TIMEOUT_SECONDS``, ``POLL_INTERVAL_SECONDS``,
``POLL_MAX_SECONDS`` all at their defaults; only pacing is off, so that the re-runs are not
spread over pacing slots), a private redis-server and the simulator, through the fault matrix's
harness (``bench/faults/harness.py``, itself on ``bench/harness.py``).

Each kill: one worker holds every check of a fresh batch of containers, each waiting on a status
answer the simulator sends only after 8 s (under the 10 s HTTP timeout: in flight); a second
worker is started and ready; the first is SIGKILLed, at a seeded random moment between two of
its renewals. Per check it held: the time from the SIGKILL
to that container's next status call as the simulator saw it (the re-run, which calls at once:
its check is overdue). The second worker then holds the next batch and is the next one killed.
At the end every container must be FINISHED (the re-run's answer).

Prints, per kill and overall, the checks held, re-run, and the max and p50 of SIGKILL to re-run;
exit 0 when every held check ran again within ``--bound`` seconds.
``tests/system/test_kill_rerun.py`` runs the same code at a smaller size.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.faults.harness import Expect, Harness, Knobs
from bench.faults.pool import WorkerProc
from worker.core.lease import renew_period

# The shipped schedule and timeouts; pacing off (its slots would spread the re-runs).
DEFAULTS = Knobs(
    interval=60.0,
    window=300.0,
    http_timeout=10.0,
    job_timeout=60.0,
    webhook_timeout=5.0,
    throttle_backoff=60.0,
    throttle_backoff_max=900.0,
    pace=0.0,
)
# The first answer of each container: in flight when its worker is killed.
SLOW_ANSWER_SECONDS = 8.0


@dataclass
class Kill:
    held: int
    rerun_s: list[float]
    not_rerun: list[str]
    lock_ms_left: list[int]


@dataclass
class KillRerun:
    lease_s: float
    bound_s: float
    containers: int = 0
    finished: int = 0
    kills: list[Kill] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def held(self) -> int:
        return sum(k.held for k in self.kills)

    @property
    def rerun_s(self) -> list[float]:
        return [s for k in self.kills for s in k.rerun_s]

    @property
    def not_rerun(self) -> list[str]:
        return [c for k in self.kills for c in k.not_rerun]

    @property
    def max_s(self) -> float:
        return max(self.rerun_s, default=float("nan"))

    @property
    def p50_s(self) -> float:
        return statistics.median(self.rerun_s) if self.rerun_s else float("nan")

    @property
    def passed(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [
            f"SIGKILL to re-run, LEASE_SECONDS {self.lease_s:g} (default settings, pacing off)",
        ]
        for n, k in enumerate(self.kills, 1):
            rerun = sorted(k.rerun_s)
            lines.append(
                f"  kill {n}: held {k.held}, re-run {len(rerun)}"
                + (
                    f", max {rerun[-1]:.2f} s, p50 {statistics.median(rerun):.2f} s"
                    if rerun
                    else ""
                )
                + f"; lock ms left at the kill {min(k.lock_ms_left, default=0)}"
                f"-{max(k.lock_ms_left, default=0)}"
            )
        lines.append(
            f"  all: held {self.held}, re-run {len(self.rerun_s)}, "
            f"max {self.max_s:.2f} s, p50 {self.p50_s:.2f} s (bound {self.bound_s:g} s); "
            f"FINISHED {self.finished}/{self.containers}"
        )
        lines += [f"  FAIL: {f}" for f in self.failures]
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


async def _wait(predicate: Callable[[], bool], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _one_kill(
    h: Harness, victim: WorkerProc, ids: Sequence[str], wait_s: float, jitter_s: float
) -> tuple[Kill, WorkerProc]:
    h.script(ids, [f"slow:{SLOW_ANSWER_SECONDS:g}:IN_PROGRESS", "FINISHED"])
    await h.enqueue(ids, Expect("FINISHED"))
    if not await _wait(lambda: all(h.ledger.of(c) for c in ids), 30):
        raise RuntimeError("the checks did not all reach the API within 30 s")
    held = await h.held_by(victim)
    successor = await h.start_worker()
    await h.wait_workers_ready([successor])
    # Anywhere between two renewals (the locks have between 2/3 of a lease and a whole one
    # left), still in flight (the answers are 8 s away), with a worker ready to take over.
    await asyncio.sleep(jitter_s)
    held = await h.held_by(victim)
    killed_at = time.time()
    await h.pool.kill(victim)

    def rerun_at(cid: str) -> float | None:
        return next((c.t for c in h.ledger.of(cid) if c.t > killed_at), None)

    await _wait(lambda: all(rerun_at(c) is not None for c in held), wait_s)
    rerun = {c: t - killed_at for c in held if (t := rerun_at(c)) is not None}
    kill = Kill(
        held=len(held),
        rerun_s=list(rerun.values()),
        not_rerun=[c for c in held if c not in rerun],
        lock_ms_left=list(held.values()),
    )
    return kill, successor


async def measure(
    *,
    containers: int = 20,
    kills: int = 3,
    bound_s: float = 10.0,
    wait_s: float = 90.0,
    seed: int = 1,
    workdir: Path,
    say: Callable[[str], None] = print,
) -> KillRerun:
    """``kills`` rounds of ``containers`` checks held by a worker that is then SIGKILLed; waits
    up to ``wait_s`` per round for the re-runs."""
    async with Harness("kill-rerun", DEFAULTS, workdir, say) as h:
        result = KillRerun(lease_s=h.settings.lease_seconds, bound_s=bound_s)
        rng = random.Random(seed)
        (victim,) = await h.start_workers(1)
        for n in range(kills):
            ids = h.ids(f"3{n}", containers)
            jitter = rng.uniform(0, renew_period(result.lease_s))
            kill, victim = await _one_kill(h, victim, ids, wait_s, jitter)
            say(f"  kill {n + 1}: held {kill.held}, re-run {len(kill.rerun_s)}")
            result.kills.append(kill)
            if kill.held < len(ids):
                result.failures.append(
                    f"kill {n + 1}: the victim held {kill.held} of {len(ids)} checks"
                )
        await h.settle(give_up=30)
        # The killed runs' slow answers are still on their way out: let the simulator send them
        # before it stops (its handlers would be destroyed pending).
        last = max((c.t + c.delay for c in h.ledger.calls), default=0.0)
        await asyncio.sleep(min(max(0.0, last - time.time() + 0.2), SLOW_ANSWER_SECONDS))
        result.containers = len(h.expect)
        for cid in h.expect:
            if (await h.hash_field(cid, "status")) == "FINISHED":
                result.finished += 1
        await h.stop_workers(grace=15)
    if result.not_rerun:
        result.failures.append(
            f"{len(result.not_rerun)} held check(s) not re-run within {wait_s:g} s"
        )
    late = [s for s in result.rerun_s if s > bound_s]
    if late:
        result.failures.append(f"{len(late)} re-run(s) later than {bound_s:g} s after the kill")
    if result.finished < result.containers:
        result.failures.append(f"FINISHED {result.finished} of {result.containers}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.kill_rerun",
        description="Time from a worker's SIGKILL to the re-run of every check it held.",
    )
    p.add_argument("--containers", type=int, default=20, help="checks held per kill (20)")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs, one after another (3)")
    p.add_argument("--bound", type=float, default=10.0, help="the target, seconds (10)")
    p.add_argument("--wait", type=float, default=90.0, help="longest wait for re-runs (90)")
    p.add_argument("--seed", type=int, default=1, help="when the kills come (1)")
    p.add_argument("--keep", action="store_true", help="keep the logs (kept anyway on failure)")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kill-rerun-"))

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"threads-poller kill_rerun: {args.kills} kills of {args.containers} held checks")
    result = asyncio.run(
        measure(
            containers=args.containers,
            kills=args.kills,
            bound_s=args.bound,
            wait_s=args.wait,
            seed=args.seed,
            workdir=root,
            say=say,
        )
    )
    say(result.render())
    if result.passed and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        say(f"logs: {root}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
