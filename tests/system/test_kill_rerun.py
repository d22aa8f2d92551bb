"""A SIGKILLed worker's checks run again within 10 s, with the default settings (issue 22).

The lease was ``JOB_TIMEOUT_SECONDS + 2`` (62 s), longer than Meta's one-minute interval: a node
loss or an OOM kill cost every in-flight poll a check. Now a run's lease is ``LEASE_SECONDS``
(6 s), renewed while it works. Real worker processes with the shipped lease, timeouts and
schedule (pacing off), a private redis-server and the simulator: a worker holding checks parked
on 8 s answers is SIGKILLed with a second one ready, twice; every check it held must call the API
again within 10 s of its kill, and end FINISHED. ``python -m bench.kill_rerun`` is the same code
at a bigger size (it prints max and p50). On the previous code every re-run came 61 s after
the kill.
"""

from __future__ import annotations

from pathlib import Path

from bench.kill_rerun import measure


async def test_every_check_a_killed_worker_held_runs_again_within_10s(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await measure(
        containers=8, kills=2, bound_s=10.0, wait_s=20.0, workdir=tmp_path, say=lines.append
    )
    text = "\n".join(lines) + "\n" + result.render()
    print(text)
    assert result.lease_s == 6.0, text  # the default, not shortened for the test
    assert [k.held for k in result.kills] == [8, 8], text
    assert result.not_rerun == [], text
    assert result.max_s < 10.0, text
    assert result.finished == result.containers == 16, text
    assert result.passed, text
