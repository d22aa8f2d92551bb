"""The command line, as a pipeline's shell script would use it (real subprocesses)."""

from __future__ import annotations

import asyncio
import json
import shlex

from redis.asyncio import Redis

from bench.harness import threads_poller_command
from config import Settings
from simulator import RunningSimulator
from tests.cli_helpers import run_cli
from tests.helpers.env import worker_env
from tests.helpers.worker import running_worker
from worker.cli.parser import SERVE_SETTINGS, WORKER_SETTINGS
from worker.store.keys import Keys


async def test_enqueue_status_wait(
    redis: Redis, settings: Settings, sim: RunningSimulator, project_env: dict[str, str]
) -> None:
    # Subprocesses take a while to start: a window long enough for the worker to come up.
    settings = settings.model_copy(update={"poll_max_seconds": 30.0})
    env = worker_env(project_env, settings)
    sim.state.set_script("1101", ["IN_PROGRESS", "FINISHED"])
    sim.state.set_script("1102", ["ERROR:INVALID_FRAME_RATE"])
    sim.state.set_script("1103", ["IN_PROGRESS"])

    code, out, err = await run_cli("enqueue", "1101", "1102", env=env)
    assert code == 0, err
    assert "1101  enqueued" in out and "1102  enqueued" in out
    code, out, _ = await run_cli("enqueue", "--json", env=env, stdin=b"1103\n1101\n")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["container_id"], d["outcome"]) for d in lines] == [
        ("1103", "enqueued"),
        ("1101", "duplicate"),
    ]

    code, out, _ = await run_cli("status", "1101", "--json", env=env)
    assert code == 0
    row = json.loads(out)
    assert (row["container_id"], row["status"], row["final"]) == ("1101", "QUEUED", False)

    async with running_worker(settings):
        ok = await run_cli("wait", "1101", "--timeout", "10", env=env)
        bad = await run_cli("wait", "1102", "--timeout", "10", "--json", env=env)
        slow = await run_cli("wait", "1103", "--timeout", "0.3", env=env)
    assert ok[0] == 0 and "FINISHED" in ok[1], ok
    assert bad[0] == 1 and json.loads(bad[1])["error_message"] == "INVALID_FRAME_RATE"
    assert slow[0] == 3

    code, out, _ = await run_cli("status", "1101", "1102", "999", "--json", env=env)
    rows = {d["container_id"]: d for d in map(json.loads, out.splitlines())}
    assert code == 1  # one id is unknown
    assert rows["1101"]["status"] == "FINISHED" and rows["1101"]["final"] is True
    assert rows["1102"]["error_message"] == "INVALID_FRAME_RATE"
    assert rows["999"]["found"] is False and rows["999"]["status"] is None


async def test_malformed_ids_exit_2_and_write_nothing(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings)
    code, out, err = await run_cli("enqueue", "123", "12x", env=env)
    assert code == 2 and out == ""
    assert "12x" in err and "digits only" in err and "nothing enqueued" in err
    assert await redis.dbsize() == 0
    code, _, err = await run_cli("enqueue", env=env, stdin=b"")
    assert code == 2 and "no container ids" in err


async def test_invalid_setting_is_one_clear_line(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings)
    env["POLL_INTERVAL_SECONDS"] = "soon"
    code, _, err = await run_cli("worker", env=env)
    assert code == 2
    assert err.strip().count("\n") == 0 and "POLL_INTERVAL_SECONDS" in err
    env = worker_env(project_env, settings)
    env["EVENT_LOOP"] = "trio"
    code, _, err = await run_cli("worker", env=env)
    assert code == 2 and "EVENT_LOOP" in err
    env = worker_env(project_env, settings)
    del env["THREADS_ACCESS_TOKEN"]
    code, _, err = await run_cli("worker", env=env)
    assert code == 2 and "THREADS_ACCESS_TOKEN" in err
    # A tokens file that is not there: refused at start, naming the path (not failed later).
    env = worker_env(project_env, settings, THREADS_TOKENS_FILE="/nonexistent/tokens.json")
    code, out, err = await run_cli("worker", env=env)
    assert code == 2 and out == ""
    assert err.strip() == (
        "threads-poller: invalid setting THREADS_TOKENS_FILE: no such file: "
        "/nonexistent/tokens.json"
    )


async def test_redis_unreachable_exit_4(project_env: dict[str, str]) -> None:
    env = dict(project_env, REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    code, _, err = await run_cli("status", "123", env=env)
    assert code == 4 and "cannot reach Redis" in err and "hunter2" not in err


async def test_output_into_head_exits_quietly(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    """``... | head -n 1``: the reader goes away; no BrokenPipeError traceback, the exit status
    of a tool killed by SIGPIPE (141)."""
    env = worker_env(project_env, settings)
    cmd = " ".join(shlex.quote(part) for part in threads_poller_command())
    # Far more than a pipe holds (64 KiB): the writes after head exits fail.
    script = (
        f"seq 1 40000 | {cmd} status | head -n 1; "
        'status=("${PIPESTATUS[@]}"); echo "exit=${status[1]}" >&2'
    )
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().startswith("1  ") and len(out.decode().splitlines()) == 1, out[:200]
    assert err.decode().strip() == "exit=141", err.decode()[-2000:]


async def test_failures_has_a_header_and_bare_dead_letters_lists(
    redis: Redis, settings: Settings, project_env: dict[str, str]
) -> None:
    env = worker_env(project_env, settings)
    keys = Keys(settings.key_prefix)
    now_ms = int((await redis.time())[0]) * 1000
    await redis.xadd(
        keys.events,
        {"container_id": "2301", "status": "ERROR", "error_message": "INVALID_FRAME_RATE"},
        id=f"{now_ms}-0",
    )
    await redis.xadd(keys.dead_letters, {"reason": "bad id", "container_id": "x"}, id="1-0")

    code, out, err = await run_cli("failures", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("1 failed in the last 1h, newest first"), out
    assert lines[1].startswith("2301  ERROR"), out

    bare = await run_cli("dead-letters", env=env)
    listed = await run_cli("dead-letters", "list", env=env)
    assert bare[0] == 0, bare
    assert bare[1] == listed[1] and "1-0" in bare[1], bare


async def test_worker_and_serve_help_name_their_settings(project_env: dict[str, str]) -> None:
    for command, names in (("worker", WORKER_SETTINGS), ("serve", SERVE_SETTINGS)):
        code, out, err = await run_cli(command, "--help", env=project_env)
        assert code == 0, err
        assert "settings (environment or .env; default)" in out
        for name in names:
            default = Settings.model_fields[name].default
            line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name.upper()])
            if isinstance(default, int | float | str) and not isinstance(default, bool):
                assert line.split()[1] == str(getattr(default, "value", default)), line
    _, out, _ = await run_cli("serve", "--help", env=project_env)
    assert "API_MAX_WAIT_SECONDS   60.0" in out
