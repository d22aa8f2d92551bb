"""Never strand a poll: every row of the fault matrix (bench/faults/) at CI size.

Each row runs real ``threads-poller worker`` processes against a private redis-server and the
simulator, injects one fault and asserts the row's figures: nothing lost, nothing stranded, no
duplicate final event, API calls per container within the documented bound, job runs per API call
at most 1.2, and what the row itself is about. ``python -m bench.faults.matrix`` runs the same
code (``--scale full`` for the bigger sizes).

The second half checks the harness itself against a real Redis: a harness that cannot fail proves
nothing (its pure accounting: tests/unit/test_faults_matrix.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bench.faults.harness import ACCOUNT, ACCOUNT_TOKEN, TOKEN, Expect, Harness, Knobs, new_result
from bench.faults.invariants import MAX_RUNS_PER_CALL
from bench.faults.matrix import ROWS, run_row
from bench.faults.report import render_matrix
from simulator import StatusCall
from worker.store.keys import Keys

# A job's own keys (arq's layout: the same whatever the deployment's prefix).
JOBS = Keys()


@pytest.mark.parametrize("row", [r.key for r in ROWS])
async def test_fault_matrix_row(row: str, tmp_path: Path) -> None:
    lines: list[str] = []
    result = await run_row(row, scale="ci", workdir=tmp_path / row, say=lines.append)
    text = "\n".join(lines) + "\n" + render_matrix([result])
    assert result.containers > 0, text
    assert result.lost == 0, text
    assert result.stranded == 0, text
    assert result.duplicate_events == 0, text
    assert result.over_bound == 0, text
    assert result.right == result.containers, text
    ratio = result.runs_per_call
    assert ratio is not None and ratio <= MAX_RUNS_PER_CALL, text
    assert result.failures == [], text


# ----- the harness itself: the monitor and the accounting see what went wrong ----------------


def call(t: float, answer: str = "IN_PROGRESS", cid: str = "1", delay: float = 0.0) -> StatusCall:
    return StatusCall(t, cid, "default", answer, delay)


async def test_the_monitor_sees_a_stranded_poll_and_the_row_fails(tmp_path: Path) -> None:
    """No worker: one poll's job is deleted (stranded), one is left queued (lost, not
    stranded), one is made final with two events and too many API calls."""
    async with Harness("selftest", Knobs(), tmp_path, lambda _: None) as h:
        stranded, queued, final = h.ids("99", 3)
        await h.enqueue([stranded, queued, final], Expect("FINISHED"))
        gen = await h.hash_field(stranded, "generation")
        assert gen is not None
        await h.redis.delete(JOBS.job_data(h.keys.job_id(stranded, gen)))
        await h.redis.hset(  # type: ignore[misc]
            h.keys.result(final),
            mapping={"final": "1", "status": "FINISHED", "checks": "1", "runs": "1"},
        )
        for _ in range(2):
            await h.redis.xadd(h.keys.events, {"container_id": final})
        for i in range(8):
            h.ledger.record(call(float(i), cid=final))
        await h.sample()
        assert list(h.stranded_seen) == [stranded]
        result = await h.collect(new_result(ROWS[0]), "test")
    assert (result.containers, result.right, result.lost, result.stranded) == (3, 1, 2, 1)
    assert result.duplicate_events == 1 and result.over_bound == 1
    assert (result.calls_max, result.bound_at_max) == (8, 6)
    assert result.runs is None and result.runs_unknown == 2  # two hashes without `runs`
    text = "\n".join(result.failures)
    for words in ("2 lost", "1 stranded", "duplicate", "over the call bound", "unknown"):
        assert words in text, text
    assert not result.passed


# ----- the simulator hooks the matrix uses ------------------------------------------------------


async def test_account_override_answers_the_next_calls_of_an_account(tmp_path: Path) -> None:
    async with Harness("selftest-sim", Knobs(), tmp_path, lambda _: None) as h:
        assert h.sim is not None
        h.state.set_script("501", ["FINISHED"])
        h.state.set_account_override(ACCOUNT, "slow:0.1:throttle", times=2)
        seen: list[StatusCall] = []
        h.state.add_status_hook(seen.append)
        url = f"{h.sim.base_url}/501"
        async with aiohttp.ClientSession() as http:

            async def status(token: str) -> int:
                params = {"fields": "status", "access_token": token}
                async with http.get(url, params=params) as resp:
                    body = await resp.json()
                    return int(body.get("error", {}).get("code", 0))

            # Another account's calls are not overridden, and do not use up the override.
            assert await status(TOKEN) == 0
            both = await asyncio.gather(status(ACCOUNT_TOKEN), status(ACCOUNT_TOKEN))
            assert list(both) == [4, 4]
            assert await status(ACCOUNT_TOKEN) == 0  # the script again: not consumed
            async with http.put(
                f"{h.sim.admin_url}/account-overrides/{ACCOUNT}", json={"step": "500", "times": 1}
            ) as resp:
                assert (await resp.json())[ACCOUNT] == {"step": "500", "remaining": 1}
            assert await status(ACCOUNT_TOKEN) == 1
    assert [(c.account, c.answer) for c in seen] == [
        ("default", "FINISHED"),
        (ACCOUNT, "throttle"),
        (ACCOUNT, "throttle"),
        (ACCOUNT, "FINISHED"),
        (ACCOUNT, "500"),
    ]
    assert [c.delay for c in seen[1:3]] == [0.1, 0.1]
