"""``threads-poller``: run the worker, feed it, read from it, simulate the API, demo it.

Exit codes (stable, documented in the README):
    0  done; for ``wait``: final success (FINISHED, PUBLISHED)
    1  ``wait``: final failure (ERROR, EXPIRED, FAILED, TIMED_OUT, and the auto-publish and
       carousel ones); ``status``, ``history``: an id is unknown;
       ``health``: no live worker (on this host, or anywhere with --any)
    2  bad usage, a malformed id or an invalid setting (nothing was written)
    3  ``wait``: still not final when --timeout ran out
    4  Redis cannot be reached, or refused this user (credentials, ACL permissions);
       ``health --liveness`` exits 0 when Redis cannot be reached (still 4 on a refusal)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import enum
import json
import logging
import math
import os
import resource
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings, SettingsError, load_settings
from config.settings import EventLoop, redacted_url
from worker.client.client import EnqueueOutcome, PollerClient
from worker.core.errors import InvalidIdError, ScopeError
from worker.core.history import HistoryEvent, describe
from worker.core.ids import MAX_BATCH, validate_id
from worker.core.result import PollResult
from worker.core.states import is_success
from worker.core.targets import check_target, parse_target, webhook_policy
from worker.core.tracing import TraceparentError, optional_traceparent
from worker.ops import tracing

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REDIS = 0, 1, 2, 3, 4

T = TypeVar("T")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class RedisUnreachableError(CliError):
    """Exit 4 because nothing answered (refused, timed out, a network error), as opposed to a
    Redis that answered and refused this user."""


def safe_redis_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    return redacted_url(url)


def redis_where(settings: Settings) -> str:
    """Which Redis, for messages: REDIS_URL without its password, or the cluster's nodes (whose
    URL's host is not used)."""
    if settings.redis_cluster_nodes:
        return f"the Redis Cluster {settings.redis_cluster_nodes}"
    return f"Redis at {safe_redis_url(settings.redis_url)}"


def _settings() -> Settings:
    try:
        settings = load_settings()
        webhook_policy(settings)  # WEBHOOK_ALLOWED_HOSTS is parsed there
    except SettingsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return settings


def _with_client(settings: Settings, work: Callable[[PollerClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of its own Redis connection, closed afterwards."""

    async def run() -> T:
        async with PollerClient.from_settings(settings) as client:
            try:
                return await work(client)
            except NoPermissionError as exc:
                # A least-privilege user (README, Security): say what it may not do.
                raise CliError(
                    f"Redis refused this user ({exc}); a producer-only user enqueues with --intake",
                    EXIT_REDIS,
                ) from None
            except AuthenticationError:
                raise CliError(
                    f"{redis_where(settings)} refused the credentials",
                    EXIT_REDIS,
                ) from None
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                raise RedisUnreachableError(
                    f"cannot reach {redis_where(settings)}: {type(exc).__name__}",
                    EXIT_REDIS,
                ) from None

    return asyncio.run(run())


# Ids read from stdin at once: all are validated before any is written ("nothing enqueued"),
# so they are held in memory; past this, split the input.
MAX_STDIN_IDS = 1_000_000
MAX_STDIN_LINE = 1 << 20


def _read_ids(args: argparse.Namespace) -> list[str]:
    ids: list[str] = list(args.ids)
    if not ids or ids == ["-"]:
        if sys.stdin is None or sys.stdin.isatty():
            raise CliError("no container ids given (as arguments or on stdin)", EXIT_USAGE)
        ids = []
        for line in sys.stdin:
            # A line is at most one id's worth of text plus blanks: a multi-megabyte "line"
            # is not a list of ids.
            if len(line) > MAX_STDIN_LINE:
                raise CliError(
                    f"a line on stdin is longer than {MAX_STDIN_LINE} characters", EXIT_USAGE
                )
            ids += line.split()
            if len(ids) > MAX_STDIN_IDS:
                raise CliError(
                    f"more than {MAX_STDIN_IDS} ids on stdin; split the input", EXIT_USAGE
                )
        if not ids:
            raise CliError("no container ids on stdin", EXIT_USAGE)
    return ids


async def _in_batches(ids: list[str], call: Callable[[list[str]], Awaitable[list[T]]]) -> list[T]:
    """``call`` on MAX_BATCH ids at a time, once every id has been validated."""
    for raw in ids:
        validate_id(raw)
    out: list[T] = []
    for i in range(0, len(ids), MAX_BATCH):
        out += await call(ids[i : i + MAX_BATCH])
    return out


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


def no_core_dumps() -> None:
    """At the start of a worker or ``serve``: a core dump would hold the tokens, the API keys
    and the Redis password, readable by whoever reads the dump directory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


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

    no_core_dumps()
    settings = _settings()
    tokens_file = settings.threads_tokens_file
    if tokens_file is not None and not tokens_file.is_file():
        # Starting anyway would fail every container of those accounts, much later.
        why = "no such file" if not tokens_file.exists() else "not a regular file"
        raise CliError(f"invalid setting THREADS_TOKENS_FILE: {why}: {tokens_file}", EXIT_USAGE)
    tokens = token_source(settings)
    own = settings.secrets()  # the Redis password, the webhook secret
    setup_logging(settings.log_format, settings.log_level, lambda: [*tokens.known_secrets(), *own])
    if settings.threads_access_token is None and settings.threads_tokens_file is None:
        raise CliError(
            "invalid setting THREADS_ACCESS_TOKEN: not set (nor THREADS_TOKENS_FILE); "
            "the worker cannot call the API",
            EXIT_USAGE,
        )
    if settings.webhook_url:
        try:
            check_target(parse_target(settings.webhook_url), webhook_policy(settings, worker=True))
        except InvalidIdError as exc:
            raise CliError(f"invalid setting WEBHOOK_URL: {exc}", EXIT_USAGE) from None
    use_event_loop(settings.event_loop)
    # README "Tracing": on only when the OpenTelemetry variables ask; flushed at the end.
    traces = tracing.configure()
    try:
        build_worker(settings, tokens=tokens).run_forever()
    except AuthenticationError:
        raise CliError(
            f"{redis_where(settings)} refused the credentials",
            EXIT_FAILURE,
        ) from None
    except (RedisError, OSError) as exc:
        # One log line in the configured format (JSON in a container), not a traceback.
        logging.getLogger("threads_poller.worker").error(  # noqa: TRY400
            "worker stopped: cannot reach Redis",
            extra={"error": redact(f"{type(exc).__name__}: {exc}")[:300]},
        )
        return EXIT_FAILURE
    finally:
        traces.shutdown()
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = _settings()
    if (args.carousel is None) != (args.children is None):
        raise CliError("--carousel and --children go together", EXIT_USAGE)
    if args.carousel is not None and args.ids:
        raise CliError("--carousel takes no container ids (its children: --children)", EXIT_USAGE)
    if args.intake and (args.carousel is not None or args.reply_to):
        raise CliError("--intake takes plain container ids (no --carousel, --reply-to)", EXIT_USAGE)
    try:
        optional_traceparent(args.traceparent)
    except TraceparentError as exc:
        raise CliError(f"invalid --traceparent: {exc}", EXIT_USAGE) from None
    # One outcome per distinct id, whichever batch a repeat falls in.
    ids = (
        list(dict.fromkeys(raw.strip() for raw in _read_ids(args))) if args.carousel is None else []
    )
    if args.intake:
        return _submit(settings, ids, args)

    async def work(c: PollerClient) -> list[EnqueueOutcome]:
        if args.carousel is not None:
            children = [part for part in args.children.split(",") if part.strip()]
            one = await c.enqueue_carousel(
                args.carousel,
                children,
                account=args.account,
                force=args.force,
                publish=args.publish,
                webhook_url=args.webhook_url,
                reply_to=args.reply_to,
                producer=args.producer,
                traceparent=args.traceparent,
            )
            return [one]
        return await _in_batches(
            ids,
            lambda batch: c.enqueue_many(
                batch,
                account=args.account,
                force=args.force,
                publish=args.publish,
                webhook_url=args.webhook_url,
                reply_to=args.reply_to,
                producer=args.producer,
                traceparent=args.traceparent,
            ),
        )

    try:
        outcomes = _with_client(settings, work)
    except InvalidIdError as exc:
        raise CliError(f"refused, nothing enqueued: {exc}", EXIT_USAGE) from None
    except ScopeError as exc:
        # Outside the producer's scope: the caller's to fix, like any refused input.
        raise CliError(str(exc), EXIT_USAGE) from None
    for o in outcomes:
        if args.json:
            line = {"container_id": o.container_id, "outcome": o.outcome, "status": o.status}
            if o.reason:
                line["reason"] = o.reason
            print(json.dumps(line))
        else:
            note = {
                "enqueued": "enqueued",
                "restarted": "enqueued (previous poll restarted)",
                "duplicate": f"already being polled ({o.status}); nothing new queued",
                "final": f"already final ({o.status}); use --force to poll again",
                "refused": f"refused: {o.reason}",
            }[o.outcome]
            print(f"{o.container_id}  {note}")
    # A refusal is the caller's to fix (a carousel's rules), like any other refused input.
    return EXIT_USAGE if any(o.outcome == "refused" for o in outcomes) else EXIT_OK


def _submit(settings: Settings, ids: list[str], args: argparse.Namespace) -> int:
    try:
        entries = _with_client(
            settings,
            lambda c: _in_batches(
                ids,
                lambda batch: c.submit_many(
                    batch,
                    account=args.account,
                    force=args.force,
                    publish=args.publish,
                    webhook_url=args.webhook_url,
                    producer=args.producer,
                    traceparent=args.traceparent,
                ),
            ),
        )
    except InvalidIdError as exc:
        raise CliError(f"refused, nothing enqueued: {exc}", EXIT_USAGE) from None
    except ScopeError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for cid, entry in zip(ids, entries, strict=True):
        if args.json:
            print(json.dumps({"container_id": cid, "outcome": "submitted", "entry_id": entry}))
        else:
            print(f"{cid}  submitted to the intake (entry {entry})")
    return EXIT_OK


def cmd_acl(args: argparse.Namespace) -> int:
    from worker.store.acl import acl_setuser

    prefix, cluster = args.prefix, args.cluster
    if prefix is None:
        settings = _settings()
        prefix, cluster = settings.key_prefix, cluster or bool(settings.redis_cluster_nodes)
    named = args.producer not in (None, "default")
    # A user name has no braces: a tagged prefix ("{tp}") names its users "tp-...".
    base = prefix.replace("{", "").replace("}", "")
    user = args.user or f"{base}-{'-'.join(args.roles)}" + (f"-{args.producer}" if named else "")
    try:
        print(acl_setuser(user, args.roles, prefix, producer=args.producer, cluster=cluster))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings()
    ids = _read_ids(args)

    async def work(client: PollerClient) -> list[tuple[str, PollResult | None]]:
        return list(zip(ids, await _in_batches(ids, client.get_many), strict=True))

    try:
        results = _with_client(settings, work)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for cid, result in results:
        print(json.dumps(_result_json(cid, result)) if args.json else _result_line(cid, result))
    return EXIT_OK if all(r is not None for _, r in results) else EXIT_FAILURE


def cmd_history(args: argparse.Namespace) -> int:
    settings = _settings()

    async def work(client: PollerClient) -> tuple[list[HistoryEvent], bool]:
        events = await client.history(args.id)
        return events, bool(events) or await client.get(args.id) is not None

    try:
        events, found = _with_client(settings, work)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if not found:
        raise CliError(
            f"unknown id {args.id}: never enqueued (or its result expired)", EXIT_FAILURE
        )
    if args.json:
        print(json.dumps({"container_id": args.id, "events": [e.as_dict() for e in events]}))
        return EXIT_OK
    width = max([len("EVENT"), *(len(e.kind) for e in events)])
    print(f"{'TIME (UTC)':<23}  {'EVENT':<{width}}  DETAIL")
    for e in events:
        at = datetime.datetime.fromtimestamp(e.at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        print(f"{at[:23]:<23}  {e.kind:<{width}}  {describe(e)}")
    if not events:
        print("(no history: polled before this version kept one)")
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        result = _with_client(settings, lambda c: c.wait(args.id, timeout=args.timeout))
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if result is None:
        if args.json:
            print(json.dumps(_result_json(args.id, result)))
        raise CliError(
            f"unknown id {args.id}: never enqueued (or its result expired); nothing to wait for",
            EXIT_FAILURE,
        )
    print(json.dumps(_result_json(args.id, result)) if args.json else _result_line(args.id, result))
    if not result.final:
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
        conf = data.get(config) or {}
        print(
            quota_line(kind, data.get(usage), conf.get("quota_total"), conf.get("quota_duration"))
        )
    return EXIT_OK


def quota_line(kind: str, used: object, total: object, window: object) -> str:
    """One quota as a person reads it: used and left, never a bare "2 of 250". Pure."""
    per = f" per {window // 3600} h" if isinstance(window, int) and window >= 3600 else ""
    if not isinstance(used, int):
        return f"{kind:18} unknown (the API did not say)"
    if not isinstance(total, int):
        return f"{kind:18} {used} used, limit unknown"
    return f"{kind:18} {used} used, {max(0, total - used)} left of {total}{per}"


def cmd_health(args: argparse.Namespace) -> int:
    import socket

    from worker.ops.health import check, is_local
    from worker.store.keys import Keys

    settings = _settings()
    host = None if args.any else (args.host or socket.gethostname())
    # Plain `health` (the HEALTHCHECK) vouches for this container's own worker process only.
    local = is_local if not (args.any or args.host) else None
    # A Redis that accepts connections but never answers must fail the check, not hang it.
    try:
        health = _with_client(
            settings,
            lambda c: asyncio.wait_for(
                check(
                    c.redis,
                    Keys(settings.key_prefix),
                    host=host,
                    local=local,
                    draining_ok=args.liveness,
                ),
                args.redis_timeout,
            ),
        )
    except RedisUnreachableError as exc:
        if not args.liveness:
            raise
        # The worker outlives a Redis outage (it retries); restarting every replica because
        # Redis is away would not bring it back. A refusal (credentials) still fails: a restart
        # re-reads REDIS_PASSWORD_FILE.
        print(f"alive (not verified): {exc}; not a reason to restart the worker")
        return EXIT_OK
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
    p.add_argument("--account", help="Threads user id that owns the containers")
    p.add_argument("--force", action="store_true", help="poll again even if already final")
    p.add_argument(
        "--publish",
        action="store_true",
        help="publish each container once FINISHED (needs --account or THREADS_USER_ID)",
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
        "--children", metavar="A,B,...", help="the carousel's 2 to 20 item container ids"
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
    from worker.cli_operator import add_commands

    add_commands(sub)
    return parser


# Commands whose arguments belong to another parser (simulator.server, worker.demo).
_PASSTHROUGH = {"simulate": "sim_args", "demo": "demo_args"}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        # Flushed here, not at exit: a reader gone away (``| head``) is seen below, once.
        sys.stdout.flush()
    except BrokenPipeError:
        # Quiet, as Unix tools are when their reader stops reading. stdout is pointed at
        # /dev/null so the interpreter's own flush at exit does not fail (and print) again;
        # SIGPIPE itself stays ignored (Python's default): the worker's sockets must not kill it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE  # what a shell shows for a tool killed by SIGPIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
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
