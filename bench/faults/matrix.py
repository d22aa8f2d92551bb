"""Never strand a poll: the fault matrix of issue 16.

    .venv/bin/python -m bench.faults.matrix [--rows oom,frozen] [--scale ci|full] [--keep]

Each row is one fault, run against real ``threads-poller worker`` processes (subprocesses,
configured through the environment only), a private redis-server on a free port and the Threads
API simulator (in this process, real HTTP on loopback): ``bench.faults.harness``. The rows
themselves: ``bench.faults.rows`` (Redis and the workers) and ``bench.faults.rows_api`` (the API
and the doors).

Every row asserts, besides what the row is about:

- lost 0: every container is final at the end;
- stranded 0: no container was ever seen (sampled during the run, and once after it) not final
  without a live job: its job key missing, or neither queued nor locked (after the run, with the
  workers stopped: not queued);
- duplicate final events 0: no more events for an id than it had polls;
- API status calls per container (simulator side) within ``call_bound``: max checks per poll
  + 1 per throttled answer + 1 per dropped connection + 1 per run the row killed or stalled;
- job runs per API call <= 1.2: the sum of the result hashes' ``runs`` (claims of the poll's job)
  over the simulator's status calls. A hash without ``runs`` makes the figure unknown, and the
  row fails on it.

The exit code is 0 only when every row passes. ``tests/system/test_fault_matrix.py`` runs every
row at CI size with the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.faults.harness import Harness, Knobs, RowSpec, Scale, new_result
from bench.faults.report import RowResult, render_matrix
from bench.faults.rows import (
    row_clock_skew,
    row_conn_drop,
    row_frozen,
    row_job_timeout,
    row_oom,
    row_sigkill,
)
from bench.faults.rows_api import (
    row_intake_replay,
    row_notfound_once,
    row_pacing,
    row_throttle_storm,
    row_webhook_force,
)

WEBHOOK_SECRET = "fault-matrix-webhook-secret"  # noqa: S105


LONG_WINDOW = Knobs(window=20.0)
# Every container's check in flight at once, at the full size too (no queueing for job slots).
ALL_AT_ONCE = Knobs(max_jobs=250, api_concurrency=250)

ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        "oom",
        "1",
        "Redis refuses writes (OOM) while answers are in flight",
        row_oom,
        20,
        200,
        ALL_AT_ONCE,
    ),
    RowSpec(
        "conn_drop",
        "2",
        "connections killed (CLIENT KILL) while outcomes are recorded",
        row_conn_drop,
        40,
        200,
        ALL_AT_ONCE,
    ),
    RowSpec(
        "job_timeout",
        "3",
        "checks queue for the one API slot past JOB_TIMEOUT_SECONDS",
        row_job_timeout,
        8,
        16,
        Knobs(api_concurrency=1, job_timeout=2.0, http_timeout=1.0),
    ),
    RowSpec(
        "frozen",
        "4",
        "worker SIGSTOPped past its lock, then SIGCONT",
        row_frozen,
        4,
        20,
        LONG_WINDOW,
    ),
    RowSpec("clock_skew", "5", "two workers, clocks +10 s and -10 s", row_clock_skew, 20, 100),
    RowSpec(
        "throttle_storm",
        "6",
        "one account: every first answer throttled, all in flight at once",
        row_throttle_storm,
        50,
        200,
        Knobs(throttle_backoff=1.0, throttle_backoff_max=8.0, max_jobs=250, api_concurrency=250),
    ),
    RowSpec(
        "pacing",
        "7",
        "a burst of one account under ACCOUNT_MAX_REQUESTS_PER_SECOND=50",
        row_pacing,
        200,
        1000,
        Knobs(pace=50.0, max_jobs=200),
    ),
    RowSpec(
        "webhook_force",
        "8",
        "forced re-enqueue while a webhook delivery waits for its retry",
        row_webhook_force,
        3,
        10,
        Knobs(
            webhook_timeout=1.0,
            extra=(
                ("WEBHOOK_SECRET", WEBHOOK_SECRET),
                ("WEBHOOK_BACKOFF_SECONDS", "0.3"),
                ("WEBHOOK_MAX_ATTEMPTS", "5"),
                # The receiver is on loopback: the SSRF guard refuses it unless allowed.
                ("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1"),
            ),
        ),
    ),
    RowSpec(
        "intake_replay",
        "9",
        "an intake entry with force 1 delivered twice",
        row_intake_replay,
        3,
        10,
        Knobs(claim_idle=3.0),
    ),
    RowSpec("notfound_once", "10", "code 100/33 once, then FINISHED", row_notfound_once, 10, 50),
    RowSpec(
        "sigkill",
        "11",
        "worker SIGKILLed mid-check (comparison)",
        row_sigkill,
        6,
        20,
        LONG_WINDOW,
    ),
)
BY_KEY = {r.key: r for r in ROWS} | {r.number: r for r in ROWS}


# Generous: the slowest CI row takes about 60 s on a 2-core machine, the slowest full row ~5 min.
ROW_BUDGET_S: dict[Scale, float] = {"ci": 300.0, "full": 1800.0}


async def run_row(
    key: str,
    *,
    scale: Scale = "ci",
    workdir: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> RowResult:
    spec = BY_KEY[key]
    own_dir = workdir is None
    root = workdir or Path(tempfile.mkdtemp(prefix=f"fault-matrix-{spec.key}-"))
    say(f"  [{spec.key}] {spec.title} ({spec.size(scale)} containers; work dir {root})")
    budget = ROW_BUDGET_S[scale]
    async with Harness(spec.key, spec.knobs, root, say) as h:
        try:
            # One bound over the whole row: a hang anywhere (a hook, a stopped worker, a
            # socket) ends as a failed row with its log, not as a CI job that never returns.
            result = await asyncio.wait_for(spec.run(h, spec, spec.size(scale)), budget)
        except Exception as exc:
            result = new_result(spec)
            what = f"row over its {budget:g} s budget" if isinstance(exc, TimeoutError) else ""
            result.failures.append(f"harness error: {what or type(exc).__name__}: {exc}")
            result.wall = time.monotonic() - h.t0
    result.workdir = root
    if result.passed and own_dir and not keep:
        shutil.rmtree(root, ignore_errors=True)
        result.workdir = None
    return result


async def run_matrix(
    keys: Sequence[str], *, scale: Scale, keep: bool, say: Callable[[str], None]
) -> list[RowResult]:
    results = []
    for key in keys:
        results.append(await run_row(key, scale=scale, keep=keep, say=say))
    return results


def parse_rows(text: str | None) -> list[str]:
    if not text:
        return [r.key for r in ROWS]
    keys = []
    for item in text.split(","):
        item = item.strip()
        if item not in BY_KEY:
            known = ", ".join(f"{r.number}|{r.key}" for r in ROWS)
            raise SystemExit(f"faults.matrix: unknown row {item!r}; known: {known}")
        keys.append(BY_KEY[item].key)
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.faults.matrix",
        description="Never strand a poll: one fault per row, real workers, real Redis.",
    )
    p.add_argument("--rows", help="comma-separated row names or numbers (default: all)")
    p.add_argument("--scale", choices=["ci", "full"], default="ci")
    p.add_argument("--keep", action="store_true", help="keep every row's logs (failed: always)")
    args = p.parse_args(argv)
    keys = parse_rows(args.rows)

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"threads-poller fault matrix, scale {args.scale}: {', '.join(keys)}")
    try:
        results = asyncio.run(run_matrix(keys, scale=args.scale, keep=args.keep, say=say))
    except KeyboardInterrupt:
        return 130
    say(render_matrix(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
