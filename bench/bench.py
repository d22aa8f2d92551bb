"""Performance report: throughput against bare arq and against the floor of a check with no job
system, scaling over workers, in-flight capacity, schedule accuracy.

    .venv/bin/python -m bench.bench [--quick] [--n N]
        [--phases noop,floor,throughput,schedule,capacity,scale,webhooks,paced]
        [--scale-workers 1,2,3]
        [--log-level INFO] [--worker-env K=V ...] [--profile DIR] [--keep]
        [--paced-n N] [--paced-accounts A] [--paced-rate R]

One run, one machine, one private ``redis-server`` (started here on a free port, AOF and RDB off,
stopped at the end). Every process that does work is separate: the Threads API simulator
(``threads-poller simulate``), the worker(s) under test (``threads-poller worker``), the bare arq
worker of the baseline (``python -m bench.bench --role noop-worker``), the floor process
(``--role floor-worker``), Redis, and this script, which only enqueues and watches. They all
share the machine's cores; the output says how many, and how much CPU other processes took
during each measurement.

The worker runs with its own defaults (uvloop event loop, one Lua call to claim due jobs) plus
``--log-level`` (its ``LOG_LEVEL``; INFO logs final states only, DEBUG adds a line per check) and
any ``--worker-env K=V`` (e.g. ``EVENT_LOOP=asyncio`` to compare event loops).

Phases (``--phases`` picks some; the README's "Performance" section explains every figure):

``noop``        bare arq: N no-op jobs (``async def noop(ctx): return None``) written beforehand,
                then one arq Worker with the same ``max_jobs`` and ``poll_delay`` as ours runs
                them; jobs/s while the queue drains from 10 % to 90 %.
``floor``       the per-process floor of a check, with no job system: one asyncio process
                (``python -m bench.bench --role floor-worker``, the worker's event loop) that
                does, for each of N containers scripted FINISHED, one aiohttp GET of the
                simulator's status endpoint and one EVALSHA of a small Lua script (HSET +
                EXPIRE + ZADD) on the same redis-server, with the worker's concurrency
                (WORKER_MAX_JOBS checks at once, API_MAX_CONCURRENCY requests at once);
                checks/s (10 % to 90 %), its CPU and Redis's per check.
``throughput``  ours: N containers enqueued beforehand with ``worker.enqueue_many``, all scripted
                FINISHED (one check each), ``ACCOUNT_MAX_REQUESTS_PER_SECOND=0``; then one
                ``threads-poller worker`` runs; checks/s = final events per second (10 % to
                90 %). Also: worker and Redis CPU per check, Redis round trips and commands per
                check, API calls per container, the worker's RSS at the end.
``tracing``     (by name only) the throughput workload twice, tracing off then on (README
                "Tracing": OTLP/HTTP to a loopback receiver of the bench that drops the data):
                the worker's CPU per check both ways.
``schedule``    lateness at half the checks/s measured above: containers scripted IN_PROGRESS
                arrive at random (Poisson) times at that mean rate, POLL_INTERVAL_SECONDS=1 and
                POLL_MAX_SECONDS=4 (at most 5 checks each); each id is enqueued twice more while
                it is polled (must cost no API call).
``capacity``    100,000 containers queued (no worker): Redis used_memory per container; then a
                worker runs for a few seconds with all of them due and IN_PROGRESS (interval 60
                s): its RSS with 100,000 in flight, and Redis memory per container once checked.
``paced``       what pacing costs the worker (bench/paced.py): --paced-n containers over
                --paced-accounts accounts drained as an unpaced burst, as a burst paced at
                --paced-rate per account, and as an unpaced trickle at that rate; worker CPU per
                container and job runs per check of each.
``scale``       the throughput workload with 1, 2 and 3 (``--scale-workers``) worker processes at
                once on the same Redis and simulator. The queue is held back (RENAMEd away) until
                every worker is ready, then released to all of them together. Per run: aggregate
                checks/s (10 % to 90 %), worker, Redis and simulator CPU per check and in % of
                one core (Redis runs on one thread: 100 % is its ceiling), how busy the whole
                machine was, and correctness: every container FINISHED exactly once (final
                events counted per id) with exactly one API call.
``history``     what a container's history costs: 200 polls of enqueue + 6 checks + final
                (IN_PROGRESS, interval 1 s, window 5 s), then MEMORY USAGE of each
                ``{prefix}:history:{id}``; "history bytes per 6-check poll" (issue 23: <= 400).
``webhooks``    checks beside hung webhook deliveries (issue 22): the same paced load (Poisson
                arrivals of IN_PROGRESS containers, 10/s for ``--schedule-seconds``, interval 1 s,
                window 4 s) on a fresh worker twice: alone, and right after 1,000 containers
                went final with a webhook to blackholed receivers (sockets that never accept:
                every attempt hangs for WEBHOOK_TIMEOUT_SECONDS). Check lateness p50 / p99 of
                both runs (the simulator's request arrival - the check's due time).

Exit status 0 whatever the figures: this is a report, not a gate.

The code: this file is the command line and the run; ``bench/phases/`` the bench's world and
its phases (one module per family), ``bench/baselines.py`` bare arq and the floor (the
``--role`` subprocesses), ``bench/measure.py`` sampling and the 10-90 % figures,
``bench/report.py`` the summary table, ``bench/harness.py`` processes, ports, redis-server and
the simulator (shared with the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.baselines import run_floor_worker, run_noop_worker
from bench.harness import mem_total_mib
from bench.measure import out
from bench.phases import ALL_PHASES, DEFAULT_PHASES, PHASES, REPO, Bench, Config, stop_spawned
from bench.report import summary


def code_version() -> str:
    """The commit under test, and which core files differ from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "config",
                "api_client",
                "worker",
                "simulator",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head}" + (f"; uncommitted changes in {', '.join(changed)}" if changed else "")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


async def run(cfg: Config) -> None:
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="threads-poller-bench-"))
    out(
        f"threads-poller bench, {started:%Y-%m-%d %H:%M:%S} UTC; {platform.node()}: "
        f"{os.cpu_count()} cores, {mem_total_mib()} MiB, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    out(
        f"All processes (worker, simulator, redis-server, this script) share these "
        f"{os.cpu_count()} cores: figures are for this box, not for a worker with a core to "
        "itself."
    )
    out(f"code: {code_version()}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    out(f"load average at start: {load}; work dir (logs): {tmp}")
    try:
        async with Bench(cfg, tmp) as bench:
            info = await bench.redis.info("server")
            out(
                f"redis-server {info['redis_version']} on {bench.redis_url} (AOF off, no RDB); "
                f"simulator {bench.sim_base} (pid {bench.child('simulator').pid})"
            )
            for name in cfg.phases:
                try:
                    await PHASES[name](bench)
                except Exception as exc:  # a report: say what broke and go on
                    bench.figures.notes.append(f"{name} phase failed: {exc!r}")
                    out(f"  ! {name} phase failed: {exc!r}")
            summary(bench.figures, cfg, started)
    finally:
        if cfg.keep:
            out(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench",
        description="threads-poller performance report (throughput vs bare arq and vs the floor "
        "of a check with no job system, scaling over 1-3 workers, capacity, schedule accuracy). "
        "Always exits 0.",
    )
    p.add_argument("--quick", action="store_true", help="smaller N (3,000 / 20,000), ~1 min")
    p.add_argument(
        "--n", type=int, help="containers (and no-op jobs, floor checks) of the throughput runs"
    )
    p.add_argument("--capacity-n", type=int, help="containers queued in the capacity phase")
    p.add_argument(
        "--million-n",
        type=int,
        help="containers in flight in the million phase (1,000,000; --quick 100,000)",
    )
    p.add_argument(
        "--phases",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated, of {', '.join(ALL_PHASES)} (default {','.join(DEFAULT_PHASES)})",
    )
    p.add_argument("--schedule-seconds", type=float, help="enqueue duration of the schedule phase")
    p.add_argument(
        "--schedule-rate",
        type=float,
        help="checks/s of the schedule phase (default: half the measured checks/s)",
    )
    p.add_argument(
        "--scale-workers",
        default="1,2,3",
        metavar="K[,K]",
        help="worker processes at once in each run of the scale phase (default 1,2,3)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        help="LOG_LEVEL of the worker (default INFO: final states only; DEBUG: every check)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra worker setting, e.g. EVENT_LOOP=asyncio (the default is uvloop)",
    )
    p.add_argument("--max-jobs", type=int, default=200, help="WORKER_MAX_JOBS, and arq max_jobs")
    p.add_argument("--paced-n", type=int, help="containers of the paced phase (6,000; 3,000)")
    p.add_argument(
        "--paced-accounts", type=int, default=20, help="accounts of the paced phase (20)"
    )
    p.add_argument(
        "--paced-rate",
        type=float,
        default=25.0,
        help="ACCOUNT_MAX_REQUESTS_PER_SECOND of the paced phase (25: 500 checks/s in all)",
    )
    p.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the throughput and paced workers"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir with all logs")
    # Internal: the subprocesses this script starts.
    p.add_argument(
        "--role",
        default="bench",
        choices=["bench", "noop-worker", "floor-worker"],
        help=argparse.SUPPRESS,
    )
    p.add_argument("--redis-url", help=argparse.SUPPRESS)
    p.add_argument("--api-url", help=argparse.SUPPRESS)
    p.add_argument("--api-concurrency", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument(
        "--event-loop", default="uvloop", choices=["uvloop", "asyncio"], help=argparse.SUPPRESS
    )
    p.add_argument("--poll-delay", type=float, default=0.2, help=argparse.SUPPRESS)
    p.add_argument("--floor-rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--floor-tick", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "noop-worker":
        return run_noop_worker(args.redis_url, args.max_jobs, args.poll_delay)
    if args.role == "floor-worker":
        return run_floor_worker(
            args.redis_url,
            args.api_url,
            args.n,
            args.max_jobs,
            args.api_concurrency,
            args.event_loop,
            args.floor_rate,
            args.floor_tick,
        )
    parser = build_parser()
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = [p for p in phases if p not in ALL_PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; known: {list(ALL_PHASES)}")
    try:
        scale_workers = tuple(int(k) for k in args.scale_workers.split(",") if k.strip())
    except ValueError:
        parser.error(f"--scale-workers: comma-separated counts, not {args.scale_workers!r}")
    if not scale_workers or min(scale_workers) < 1:
        parser.error("--scale-workers: at least one count, each >= 1")
    bad_env = [kv for kv in args.worker_env if "=" not in kv]
    if bad_env:
        parser.error(f"--worker-env takes K=V, not {bad_env}")
    env = dict(kv.split("=", 1) for kv in args.worker_env)
    cfg = Config(
        quick=args.quick,
        n=args.n or (3_000 if args.quick else 20_000),
        capacity_n=args.capacity_n or (20_000 if args.quick else 100_000),
        million_n=args.million_n or (100_000 if args.quick else 1_000_000),
        schedule_seconds=args.schedule_seconds or (10.0 if args.quick else 20.0),
        capacity_run_seconds=5.0 if args.quick else 10.0,
        phases=phases,
        scale_workers=scale_workers,
        log_level=args.log_level,
        worker_env=env,
        profile=args.profile,
        keep=args.keep,
        max_jobs=args.max_jobs,
        half_rate=args.schedule_rate,
        paced_n=args.paced_n or (3_000 if args.quick else 6_000),
        paced_accounts=args.paced_accounts,
        paced_rate=args.paced_rate,
    )
    signal.signal(signal.SIGTERM, _terminate)
    try:
        asyncio.run(run(cfg))
    finally:
        stop_spawned(timeout=10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
