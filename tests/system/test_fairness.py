"""Several worker replicas share the checks: none of them takes the whole load.

A claim takes no more due jobs than the replica has free slots (``Runner.run``), and a replica
claims again as soon as a slot frees, so the load follows free capacity. With arq's own worker
one of three replicas did 75 of 81 checks (a replica took whatever was due into its queue).
Measured here (10 slots each, 300 ms per call, 243 runs, 4 runs): the busiest replica did 33 % to
37 %, the least busy 30 % to 33 %.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from redis.asyncio import Redis

from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import start_worker
from tests.helpers.env import worker_env
from tests.helpers.waiting import finals, wait_until
from worker import enqueue_many

N = 81
REPLICAS = 3


async def test_three_replicas_share_the_checks(
    redis: Redis,
    settings: Settings,
    sim: RunningSimulator,
    project_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ids = [str(31_000 + i) for i in range(N)]
    # Each check holds its API call 300 ms and a replica runs 10 at once: 81 due checks are more
    # than one replica can hold, so the others must take their share (a claim takes no more
    # than the free slots). Without that bound one replica would claim them all and run them
    # late, one slot-full after another.
    sim.state.set_script(
        "310*", ["slow:0.3:IN_PROGRESS", "slow:0.3:IN_PROGRESS", "slow:0.3:FINISHED"]
    )
    settings = settings.model_copy(update={"poll_interval_seconds": 1.0, "poll_max_seconds": 8.0})
    env = worker_env(
        project_env,
        settings,
        POLL_INTERVAL_SECONDS="1",
        POLL_MAX_SECONDS="8",
        LOG_FORMAT="json",
        METRICS_PORT="0",
        WORKER_MAX_JOBS="10",
    )
    logs = [tmp_path / f"w{i}.log" for i in range(REPLICAS)]
    workers = [await start_worker(env, log) for log in logs]
    try:
        await wait_until(lambda: all("worker started" in _read(p) for p in logs), timeout=30)
        await enqueue_many(redis, ids, settings=settings)
        await finals(redis, settings, ids, timeout=60)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(w.wait(), 20) for w in workers]
    assert codes == [0] * REPLICAS
    runs = [_runs(p) for p in logs]
    total = sum(runs)
    assert total >= 3 * N  # three checks each
    # Fair enough: nobody idles while another does the lot (1/3 each would be even).
    print(f"runs per replica: {runs} of {total}")
    # Shared: no replica does half, none sits idle (75 of 81 was 93 % for one).
    assert max(runs) <= total * 0.5 and min(runs) >= total * 0.2, runs


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _runs(path: Path) -> int:
    for line in reversed(_read(path).splitlines()):
        if '"worker stopped"' in line:
            return int(json.loads(line)["started"])
    raise AssertionError(f"no 'worker stopped' line in {path}")
