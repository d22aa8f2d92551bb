"""``threads-poller demo --serve``: the demo's scenarios, then the console left running on their
data with the URL and a key it prints; Ctrl-C (SIGINT) stops everything, exit 0, no traceback."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import aiohttp

from bench.harness import threads_poller_command
from worker.demo import SCENARIOS


async def test_demo_serve_leaves_the_console_running_until_ctrl_c(
    tmp_path: Path, project_env: dict[str, str]
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *threads_poller_command(),
        "demo",
        "--serve",
        "--interval",
        "1",
        "--window",
        "5",
        "--timeout",
        "60",
        env=project_env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            lines.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        t0 = time.monotonic()
        while not any(line.startswith("API key") for line in lines):
            assert proc.returncode is None and not reader.done(), "".join(lines)
            assert time.monotonic() - t0 < 120, "".join(lines)
            await asyncio.sleep(0.2)
        out = "".join(lines)
        assert "Every scenario reached its expected final state." in out, out
        url_match = re.search(r"^Console: (http://127\.0\.0\.1:\d+)/", out, re.MULTILINE)
        key_match = re.search(r"^API key \(read-write, made for this demo\): (\S+)$", out, re.M)
        assert url_match and key_match, out
        url, key = url_match[1], key_match[1]
        auth = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/", headers=auth) as resp:
                assert resp.status == 200
                page = await resp.text()
            async with http.get(f"{url}/v1/overview", headers=auth) as resp:
                assert resp.status == 200
                overview = await resp.json()
            async with http.get(f"{url}/v1/finals?limit=100", headers=auth) as resp:
                assert resp.status == 200
                finals = {e["container_id"] for e in (await resp.json())["items"]}
            async with http.get(f"{url}/v1/overview") as resp:
                assert resp.status == 401  # the key is needed
        # The demo's containers are there: every final state, its failures on the page.
        assert {sc.container_id for sc in SCENARIOS} <= finals, finals
        assert overview["workers"]["alive"] >= 1
        failed = [sc.container_id for sc in SCENARIOS if sc.expect not in ("FINISHED", "PUBLISHED")]
        assert failed and all(cid in page for cid in failed)

        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 60)
        await asyncio.wait_for(reader, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(lines)
    assert rc == 0, out
    assert "Traceback" not in out, out
    assert "Console stopped (exit 0)." in out, out
    assert "Worker stopped (exit 0)." in out, out
