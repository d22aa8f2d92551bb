"""Running the simulator: an async context manager for tests and a CLI for everything else."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from simulator.app import ADMIN_PREFIX, API_PREFIX, build_app
from simulator.instagram import INSTAGRAM_API_PREFIX
from simulator.records import DEFAULT_FAULT_KINDS, DEFAULT_SLOW_SECONDS, ConfigError
from simulator.rules import parse_token_specs
from simulator.state import SimulatorState
from simulator.steps import Step, StepError, parse_step_list, parse_steps

log = logging.getLogger("simulator")

# Slow steps can keep handlers asleep for seconds; shutting down must not wait for them.
SHUTDOWN_TIMEOUT = 0.5


class RedactedAccessLogger(AbstractAccessLogger):
    """One line per request with the path only: the query string may carry the token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s -> %s in %.3fs", request.method, request.path, response.status, time
        )


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    base_url: str
    admin_url: str
    state: SimulatorState
    host: str
    port: int
    # Instagram's routes, on the same server (base_url is Threads').
    instagram_url: str = ""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def run_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    state: SimulatorState | None = None,
    *,
    access_log: bool = False,
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator on `host:port` (0: a free port) for the duration of the block."""
    state = state if state is not None else SimulatorState()
    runner = web.AppRunner(
        build_app(state),
        handle_signals=False,
        access_log_class=RedactedAccessLogger,
        access_log=log if access_log else None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        root = f"http://{_url_host(host)}:{bound_port}"
        yield RunningSimulator(
            base_url=root + API_PREFIX,
            admin_url=root + ADMIN_PREFIX,
            state=state,
            host=host,
            port=bound_port,
            instagram_url=root + INSTAGRAM_API_PREFIX,
        )
    finally:
        await runner.cleanup()


# ----- CLI ---------------------------------------------------------------------------------


def _script_arg(text: str) -> tuple[str, tuple[Step, ...]]:
    key, sep, steps = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected ID=STEP,STEP,... got {text!r}")
    try:
        return key, parse_step_list(steps)
    except StepError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _steps_arg(text: str) -> tuple[Step, ...]:
    try:
        return parse_step_list(text)
    except StepError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate_arg(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("the fault rate must be within [0, 1]")
    return rate


def _carousel_arg(text: str) -> tuple[str, list[str]]:
    parent, sep, children = text.partition("=")
    kids = [c.strip() for c in children.split(",") if c.strip()]
    if not sep or not parent or len(kids) < 2:
        raise argparse.ArgumentTypeError(f"expected PARENT=CHILD,CHILD,... got {text!r}")
    return parent, kids


def _reply_arg(text: str) -> tuple[str, str, float]:
    cid, sep, rest = text.partition("=")
    reply_to, _, settle = rest.partition(":")
    if not sep or not cid or not reply_to:
        raise argparse.ArgumentTypeError(f"expected ID=REPLY_TO[:SETTLE_S] got {text!r}")
    try:
        return cid, reply_to, float(settle) if settle else 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad settle seconds in {text!r}") from None


def _kinds_arg(text: str) -> list[str]:
    return [kind.strip() for kind in text.split(",") if kind.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threads-poller simulate",
        description="Simulated Threads and Instagram Graph APIs (status, quota, publish) on "
        "loopback; Threads under /v1.0, Instagram under /v23.0.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument(
        "--script",
        action="append",
        default=[],
        type=_script_arg,
        metavar="ID=STEP,STEP,...",
        help="script for a container id; an ID ending in * is a prefix rule (repeatable)",
    )
    parser.add_argument(
        "--scripts-file",
        type=Path,
        metavar="PATH",
        help='JSON object {"<id or prefix*>": ["STEP", ...]}',
    )
    parser.add_argument(
        "--default-script",
        type=_steps_arg,
        default=parse_step_list("notfound"),
        metavar="STEPS",
        help="script for ids no rule matches (default: notfound)",
    )
    parser.add_argument(
        "--carousel",
        action="append",
        default=[],
        type=_carousel_arg,
        metavar="PARENT=CHILD,CHILD,...",
        help="a carousel container and its children (repeatable)",
    )
    parser.add_argument(
        "--reply",
        action="append",
        default=[],
        type=_reply_arg,
        metavar="ID=REPLY_TO[:SETTLE_S]",
        help="a reply container; published sooner than SETTLE_S after FINISHED it loses its "
        "reply_to_id (repeatable)",
    )
    parser.add_argument("--fault-rate", type=_rate_arg, default=0.0)
    parser.add_argument(
        "--fault-kinds", type=_kinds_arg, default=list(DEFAULT_FAULT_KINDS), metavar="LIST"
    )
    parser.add_argument("--slow-seconds", type=float, default=DEFAULT_SLOW_SECONDS)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN[=USER_ID]",
        help="accepted token (repeatable); with none, any non-empty token is accepted",
    )
    parser.add_argument(
        "--expired-token",
        action="append",
        default=[],
        metavar="TOKEN[=USER_ID]",
        help="token answered with 190/463 (repeatable)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log one redacted line per request"
    )
    return parser


def _load_scripts_file(path: Path) -> dict[str, tuple[Step, ...]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read scripts file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"scripts file {path} must hold a JSON object")
    scripts: dict[str, tuple[Step, ...]] = {}
    for key, steps in data.items():
        if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
            raise ConfigError(f"scripts file {path}: {key!r} must map to a list of strings")
        try:
            scripts[key] = parse_steps(steps)
        except StepError as exc:
            raise ConfigError(f"scripts file {path}: {key!r}: {exc}") from exc
    return scripts


def state_from_args(args: argparse.Namespace) -> SimulatorState:
    scripts = _load_scripts_file(args.scripts_file) if args.scripts_file else {}
    # Command-line scripts win over the file, so a file can be tweaked without editing it.
    scripts.update(dict(args.script))
    state = SimulatorState(
        scripts=scripts,
        default_script=args.default_script,
        fault_rate=args.fault_rate,
        fault_kinds=args.fault_kinds,
        slow_seconds=args.slow_seconds,
        seed=args.seed,
        tokens=parse_token_specs(args.token),
        expired_tokens=parse_token_specs(args.expired_token),
    )
    for parent, children in args.carousel:
        state.set_carousel(parent, children)
    for cid, reply_to, settle in args.reply:
        state.set_reply(cid, reply_to, settle_seconds=settle)
    return state


async def _serve(args: argparse.Namespace, state: SimulatorState) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with run_simulator(args.host, args.port, state, access_log=args.verbose) as sim:
            print(f"simulator listening on {sim.base_url}", flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        state = state_from_args(args)
    except (ConfigError, StepError) as exc:
        parser.error(str(exc))
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(args, state))
    except OSError as exc:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Only possible before the signal handlers are installed or after they are removed.
        return 130
    return 0
