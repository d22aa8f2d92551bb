"""The processes the bench starts (bench/harness.py): its redis-server, the simulator, the
workers and the measured ``--role`` subprocesses, each registered so that none outlives the
bench (``stop_spawned``); and what the workers' environment says of their settings.
"""

from __future__ import annotations

from pathlib import Path

from bench import harness
from bench.harness import (
    Child,
    RedisServer,
    environment_without_settings,
    start_simulator_process,
)
from bench.phases.figures import CAPACITY_IDS, REPO, SCHEDULE_IDS


def spawn(
    name: str, cmd: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path
) -> Child:
    return _register(harness.spawn(name, cmd, log, env=env, cwd=cwd))


# Every process this bench started, so that none outlives it (stop_spawned, at the end of main).
_SPAWNED: list[Child] = []


def _register(child: Child) -> Child:
    _SPAWNED.append(child)
    return child


async def start_redis(tmp: Path) -> RedisServer:
    """The bench's own redis-server: a free port, AOF and RDB off, data in ``tmp/redis``."""
    server = RedisServer(tmp / "redis", new_session=True)
    try:
        await server.astart()
    except BaseException:
        server.kill()
        raise
    _register(server.child)
    return server


async def start_simulator(tmp: Path) -> tuple[Child, str, str]:
    """``threads-poller simulate --port 0``: FINISHED by default, IN_PROGRESS for two prefixes."""
    args = [
        "--default-script",
        "FINISHED",
        "--script",
        f"{SCHEDULE_IDS}*=IN_PROGRESS",
        "--script",
        f"{CAPACITY_IDS}*=IN_PROGRESS",
    ]
    child, base, admin = await start_simulator_process(
        args, tmp / "simulator.log", env=clean_env(), cwd=tmp
    )
    _register(child)
    return child, base, admin


def clean_env() -> dict[str, str]:
    """This environment without any setting of threads-poller, so only ours apply."""
    env = environment_without_settings()
    env["PYTHONPATH"] = str(REPO)
    return env


def stop_spawned(timeout: float = 10.0) -> None:
    """Stop every process this bench started, last first (so that none outlives it)."""
    for child in reversed(_SPAWNED):
        child.stop(timeout=timeout)


# ----- the workers' settings, as --worker-env sets them --------------------------------------


def event_loop(worker_env: dict[str, str]) -> str:
    """The worker's event loop: EVENT_LOOP from --worker-env, else the setting's default."""
    from config import Settings

    default = Settings.model_fields["event_loop"].default
    return worker_env.get("EVENT_LOOP", str(getattr(default, "value", default)))


def api_max_concurrency(worker_env: dict[str, str]) -> int:
    """The worker's API_MAX_CONCURRENCY: from --worker-env, else the setting's default."""
    from config import Settings

    default = Settings.model_fields["api_max_concurrency"].default
    return int(worker_env.get("API_MAX_CONCURRENCY", default))
