"""``threads-poller``: run the worker, feed it, read from it, simulate the API, demo it.

Exit codes (stable, documented in the README):
    0  done; for ``wait``: final success (FINISHED, PUBLISHED)
    1  ``wait``: final failure (ERROR, EXPIRED, FAILED, TIMED_OUT); ``status``: an id is unknown;
       ``health``: no live worker (on this host, or anywhere with --any)
    2  bad usage, a malformed id or an invalid setting (nothing was written)
    3  ``wait``: still not final when --timeout ran out
    4  Redis cannot be reached
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings, SettingsError, load_settings
from config.settings import EventLoop
from worker.client.client import PollerClient
from worker.core.errors import InvalidIdError
from worker.core.result import PollResult
from worker.core.states import is_success

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REDIS = 0, 1, 2, 3, 4

T = TypeVar("T")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def safe_redis_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{host}")
    return urlunsplit(parts)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _with_client(settings: Settings, work: Callable[[PollerClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of its own Redis connection, closed afterwards."""

    async def run() -> T:
        async with PollerClient.from_settings(settings) as client:
            try:
                return await work(client)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise CliError(
                    f"cannot reach Redis at {safe_redis_url(settings.redis_url)}: "
                    f"{type(exc).__name__}",
                    EXIT_REDIS,
                ) from None

    return asyncio.run(run())


def _read_ids(args: argparse.Namespace) -> list[str]:
    ids: list[str] = list(args.ids)
    if not ids or ids == ["-"]:
        if sys.stdin is None or sys.stdin.isatty():
            raise CliError("no container ids given (as arguments or on stdin)", EXIT_USAGE)
        ids = [tok for line in sys.stdin for tok in line.split()]
        if not ids:
            raise CliError("no container ids on stdin", EXIT_USAGE)
    return ids


def _result_json(cid: str, result: PollResult | None) -> dict[str, Any]:
    if result is None:
        return {
            "container_id": cid,
            "status": None,
            "error_message": None,
            "final": False,
            "found": False,
        }
    data = result.to_dict()
    data["found"] = True
    return data


def _result_line(cid: str, result: PollResult | None) -> str:
    if result is None:
        return f"{cid}  unknown (never enqueued, or its result expired)"
    text = f"{cid}  {result.status}{' (final)' if result.final else ''}  checks={result.checks}"
    if result.error_message:
        text += f"  error_message={result.error_message}"
    if result.last_error:
        text += f"  last_error={result.last_error}"
    return text


def use_event_loop(kind: EventLoop) -> None:
    if kind is EventLoop.UVLOOP:
        try:
            import uvloop
        except ImportError as exc:  # a platform without uvloop wheels
            raise CliError(
                "invalid setting EVENT_LOOP: uvloop is not installed (set EVENT_LOOP=asyncio)",
                EXIT_USAGE,
            ) from exc
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)


def cmd_worker(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from api_client.redact import redact
    from worker.jobs.quota import token_source
    from worker.ops.logs import setup_logging
    from worker.runtime.app import build_worker

    settings = _settings()
    tokens = token_source(settings)
    setup_logging(settings.log_format, settings.log_level, tokens.known_secrets)
    if settings.threads_access_token is None and settings.threads_tokens_file is None:
        raise CliError(
            "invalid setting THREADS_ACCESS_TOKEN: not set (nor THREADS_TOKENS_FILE); "
            "the worker cannot call the API",
            EXIT_USAGE,
        )
    use_event_loop(settings.event_loop)
    try:
        build_worker(settings, tokens=tokens).run_forever()
    except (RedisError, OSError) as exc:
        raise CliError(f"cannot reach Redis: {redact(str(exc))[:300]}", EXIT_FAILURE) from None
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = _settings()
    ids = _read_ids(args)
    try:
        outcomes = _with_client(
            settings,
            lambda c: c.enqueue_many(
                ids,
                account=args.account,
                force=args.force,
                publish=args.publish,
                webhook_url=args.webhook_url,
            ),
        )
    except InvalidIdError as exc:
        raise CliError(f"refused, nothing enqueued: {exc}", EXIT_USAGE) from None
    for o in outcomes:
        if args.json:
            print(
                json.dumps(
                    {"container_id": o.container_id, "outcome": o.outcome, "status": o.status}
                )
            )
        else:
            note = {
                "enqueued": "enqueued",
                "restarted": "enqueued (previous poll restarted)",
                "duplicate": f"already being polled ({o.status}); nothing new queued",
                "final": f"already final ({o.status}); use --force to poll again",
            }[o.outcome]
            print(f"{o.container_id}  {note}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings()
    ids = _read_ids(args)

    async def work(client: PollerClient) -> list[tuple[str, PollResult | None]]:
        return list(zip(ids, await client.get_many(ids), strict=True))

    try:
        results = _with_client(settings, work)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for cid, result in results:
        print(json.dumps(_result_json(cid, result)) if args.json else _result_line(cid, result))
    return EXIT_OK if all(r is not None for _, r in results) else EXIT_FAILURE


def cmd_wait(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        result = _with_client(settings, lambda c: c.wait(args.id, timeout=args.timeout))
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(json.dumps(_result_json(args.id, result)) if args.json else _result_line(args.id, result))
    if result is None or not result.final:
        return EXIT_TIMEOUT
    return EXIT_OK if is_success(result.status) else EXIT_FAILURE


def cmd_quota(args: argparse.Namespace) -> int:
    from api_client.errors import ThreadsError
    from worker.jobs.quota import get_quota
    from worker.store.accounts import AccountStore
    from worker.store.keys import Keys

    settings = _settings()

    async def work(client: PollerClient) -> dict[str, Any]:
        redis = client.redis
        if args.cached:
            snap = await AccountStore(redis, Keys(settings.key_prefix)).load_quota(args.user_id)
            if snap is None:
                raise CliError(f"no cached quota for {args.user_id}", EXIT_FAILURE)
            return {
                "user_id": snap.user_id,
                "fetched_at": snap.fetched_at,
                **snap.limit.model_dump(),
            }
        limit = await get_quota(args.user_id, settings=settings, redis=redis)
        return {"user_id": args.user_id, **limit.model_dump()}

    try:
        data = _with_client(settings, work)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except ThreadsError as exc:
        raise CliError(f"quota of {args.user_id}: {exc}", EXIT_FAILURE) from None
    if args.json:
        print(json.dumps(data))
        return EXIT_OK
    for kind, usage, config in (
        ("posts", "quota_usage", "config"),
        ("replies", "reply_quota_usage", "reply_config"),
        ("deletes", "delete_quota_usage", "delete_config"),
        ("location searches", "location_search_quota_usage", "location_search_config"),
    ):
        used = data.get(usage)
        total = (data.get(config) or {}).get("quota_total")
        window = (data.get(config) or {}).get("quota_duration")
        shown = "unknown" if used is None else f"{used} of {total if total is not None else '?'}"
        per = f" per {window // 3600} h" if isinstance(window, int) else ""
        print(f"{kind:18} {shown}{per}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    import socket

    from worker.ops.health import check, is_local
    from worker.store.keys import Keys

    settings = _settings()
    host = None if args.any else (args.host or socket.gethostname())
    # Plain `health` (the HEALTHCHECK) vouches for this container's own worker process only.
    local = is_local if not (args.any or args.host) else None
    # A Redis that accepts connections but never answers must fail the check, not hang it.
    health = _with_client(
        settings,
        lambda c: asyncio.wait_for(
            check(c.redis, Keys(settings.key_prefix), host=host, local=local),
            args.redis_timeout,
        ),
    )
    if not health.healthy:
        raise CliError(health.message, EXIT_FAILURE)
    print(health.message)
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulator.server import main as simulate_main

    return simulate_main(args.sim_args)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import main as demo_main

    return demo_main(args.demo_args)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"timeout must be a finite number, got {text!r}")
    return value  # a negative timeout means "look once, do not wait"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threads-poller",
        description="Poll Threads media containers until they are final; results in Redis.",
        epilog="Settings come from the environment and .env (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a worker that checks containers")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="start polling container ids (args or stdin)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--account", help="Threads user id that owns the containers")
    p.add_argument("--force", action="store_true", help="poll again even if already final")
    p.add_argument(
        "--publish",
        action="store_true",
        help="publish each container once FINISHED (needs --account or THREADS_USER_ID)",
    )
    p.add_argument("--webhook-url", help="POST a signed JSON body here on the final state")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("status", help="show the stored state of container ids")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("wait", help="wait until a container is final")
    p.add_argument("id", metavar="ID")
    p.add_argument("--timeout", type=_seconds, default=360.0, help="seconds (default 360)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("quota", help="show an account's publishing quota (API call)")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cached", action="store_true", help="read the worker's cached copy instead")
    p.set_defaults(func=cmd_quota)

    p = sub.add_parser(
        "health",
        help="exit 0 if a worker process of this container (PID namespace) is alive and taking "
        "jobs (the image's HEALTHCHECK)",
    )
    p.add_argument("--any", action="store_true", help="any live worker of this KEY_PREFIX")
    p.add_argument(
        "--host", help="any live worker with this host name (not checked against a process)"
    )
    p.add_argument("--redis-timeout", type=float, default=5.0, help="seconds (default 5)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("simulate", help="run the Threads API simulator", add_help=False)
    p.add_argument("sim_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="end-to-end demo on the simulator", add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)

    # serve, inflight, failures, accounts, dead-letters, cancel (the HTTP API's CLI parity).
    from worker.cli_operator import add_commands

    add_commands(sub)
    return parser


# Commands whose arguments belong to another parser (simulator.server, worker.demo).
_PASSTHROUGH = {"simulate": "sim_args", "demo": "demo_args"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        # argparse's REMAINDER refuses a leading option (`simulate --port 8787` was an error),
        # so these commands take the rest of the line as it is.
        args = build_parser().parse_args(argv[:1])
        setattr(args, _PASSTHROUGH[argv[0]], argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"threads-poller: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
