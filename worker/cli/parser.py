"""Every command, argument and flag of ``threads-poller``, in the order ``--help`` lists them;
the commands themselves live in ``producer``, ``services`` and ``operator``.
"""

from __future__ import annotations

import argparse
import enum
import math
from collections.abc import Sequence
from typing import Any

from config import Settings
from worker.cli.operator import (
    cmd_accounts,
    cmd_acl,
    cmd_cancel,
    cmd_dead_letters,
    cmd_failures,
    cmd_inflight,
    cmd_quota,
)
from worker.cli.producer import cmd_enqueue, cmd_history, cmd_status, cmd_wait
from worker.cli.services import cmd_demo, cmd_health, cmd_serve, cmd_simulate, cmd_worker
from worker.store.admin import DeadLetterKind


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"timeout must be a finite number, got {text!r}")
    return value  # a negative timeout means "look once, do not wait"


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError("a whole number from 1 to 500")
    return int(text)


# The settings that matter to the long-running commands, named in their --help with their defaults
# (read from config.Settings' fields, so a changed default shows here at once).
WORKER_SETTINGS = (
    "redis_url",
    "key_prefix",
    "threads_access_token",
    "threads_api_base_url",
    "poll_interval_seconds",
    "poll_max_seconds",
    "worker_max_jobs",
    "api_max_concurrency",
    "account_max_requests_per_second",
    "webhook_url",
    "webhook_concurrency",
    "metrics_port",
    "event_loop",
    "log_level",
)

SERVE_SETTINGS = (
    "redis_url",
    "key_prefix",
    "http_host",
    "http_port",
    "api_keys",
    "api_read_keys",
    "api_max_batch",
    "api_max_wait_seconds",
    "api_max_event_streams",
    "api_max_long_polls",
    "serve_metrics_port",
    "trusted_proxy",
    "log_level",
)


def _shown_default(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_epilog(names: Sequence[str]) -> str:
    """``NAME  default`` for each setting (KeyError for a name that is not a setting)."""
    fields = Settings.model_fields
    width = max(len(n) for n in names) + 2
    lines = [f"  {n.upper():{width}}{_shown_default(fields[n].default)}" for n in names]
    return "settings (environment or .env; default), the rest in the README:\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threads-poller",
        description="Poll Threads media containers until they are final; results in Redis.",
        epilog="Settings come from the environment and .env (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "worker",
        help="run a worker that checks containers",
        epilog=settings_epilog(WORKER_SETTINGS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="start polling container ids (args or stdin)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument(
        "--platform",
        choices=["threads", "instagram"],
        default=None,
        help="whose containers these are (default: threads)",
    )
    p.add_argument("--account", help="the user id that owns the containers (on --platform)")
    p.add_argument("--force", action="store_true", help="poll again even if already final")
    p.add_argument(
        "--publish",
        action="store_true",
        help="publish each container once FINISHED (with --account, or THREADS_USER_ID / "
        "INSTAGRAM_USER_ID, else 'me')",
    )
    p.add_argument("--webhook-url", help="POST a signed JSON body here on the final state")
    p.add_argument(
        "--reply-to",
        metavar="MEDIA_ID",
        help="the containers are replies to this media id (reply quota, longer settle time)",
    )
    p.add_argument(
        "--carousel",
        metavar="PARENT",
        help="enqueue one carousel: its parent container id (with --children; no IDs)",
    )
    p.add_argument(
        "--children",
        metavar="A,B,...",
        help="the carousel's 2 to 20 item container ids (Instagram: 2 to 10)",
    )
    p.add_argument(
        "--intake",
        action="store_true",
        help="XADD to the intake stream instead (all a Redis user with the producer role may do)",
    )
    p.add_argument(
        "--producer",
        metavar="NAME",
        help="enqueue as this producer (PRODUCERS): its scope applies, and the polls are its "
        "own; with --intake, its stream",
    )
    p.add_argument(
        "--traceparent",
        metavar="00-TRACE-SPAN-FLAGS",
        help='the producer\'s W3C Trace Context: the polls join that trace (README "Tracing")',
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("acl", help="print the ACL SETUSER line of a least-privilege Redis user")
    p.add_argument("roles", nargs="+", choices=["producer", "reader", "enqueuer", "worker"])
    p.add_argument("--user", help="the user's name (default: <prefix>-<roles>)")
    p.add_argument("--prefix", help="the deployment's KEY_PREFIX (default: from the settings)")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="for the nodes of a Redis Cluster (also when the settings have REDIS_CLUSTER_NODES "
        "and no --prefix is given): adds what redis-py's cluster client sends",
    )
    p.add_argument(
        "--producer",
        metavar="NAME",
        help="with the producer role: XADD to NAME's own stream {prefix}:intake:NAME only",
    )
    p.set_defaults(func=cmd_acl)

    p = sub.add_parser("status", help="show the stored state of container ids")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "history",
        help="show a container's history: checks, pauses, publish, webhooks, cancel, final",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true", help="one JSON object: the events")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("wait", help="wait until a container is final")
    p.add_argument("id", metavar="ID")
    p.add_argument("--timeout", type=_seconds, default=360.0, help="seconds (default 360)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("quota", help="show an account's publishing quota (API call)")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument(
        "--platform",
        choices=["threads", "instagram"],
        default="threads",
        help="whose account (Instagram: content_publishing_limit)",
    )
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
    p.add_argument(
        "--liveness",
        action="store_true",
        help="a liveness probe's answer: a worker draining after SIGTERM still counts, and a "
        "Redis that cannot be reached passes (exit 0, saying so); only a worker that no longer "
        "beats, or a Redis that refuses this user, fails",
    )
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("simulate", help="run the Threads API simulator", add_help=False)
    p.add_argument("sim_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "demo",
        help="end-to-end demo on the simulator (--serve: then the console on its data)",
        add_help=False,
    )
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)

    # serve, inflight, failures, accounts, dead-letters, cancel (the HTTP API's CLI parity).
    p = sub.add_parser(
        "serve",
        help="run the HTTP API and the console (HTTP_HOST:HTTP_PORT)",
        epilog=settings_epilog(SERVE_SETTINGS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("inflight", help="containers being polled, soonest deadline first")
    p.add_argument("--limit", type=_limit, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_inflight)

    p = sub.add_parser("failures", help="final states that failed, newest first, with the reason")
    p.add_argument("--since", default="1h", help="how far back: 90s, 30m, 1h, 2d (default 1h)")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("accounts", help="throttling, pause left, cached quota, rejected tokens")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_accounts)

    p = sub.add_parser("dead-letters", help="list, replay or discard dead letters")
    # Bare ``dead-letters`` lists (the harmless action), as ``dead-letters list`` does.
    p.add_argument("action", nargs="?", default="list", choices=["list", "replay", "discard"])
    p.add_argument("id", nargs="?", metavar="ID", help="the dead letter's id (replay, discard)")
    p.add_argument("--kind", choices=[k.value for k in DeadLetterKind], help="default: both")
    p.add_argument("--limit", type=_limit, default=50, help="list: per kind (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("cancel", help="stop polling a container: final CANCELLED, one event")
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", help="kept in last_error (at most 200 characters)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cancel)
    return parser
