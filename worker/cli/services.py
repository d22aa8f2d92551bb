"""The long-running commands of ``threads-poller`` and their probe: ``worker`` (the job runners),
``serve`` (the HTTP API and the console, worker.web), ``health`` (the image's HEALTHCHECK and a
liveness probe), and the pass-through ``simulate`` and ``demo``.

Each refuses a setting it cannot run with before it starts (exit 2), with no core dumps: a dump
would hold the tokens, the API keys and the Redis password.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource

from redis.exceptions import AuthenticationError

from config.settings import EventLoop
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    RedisUnreachableError,
    load_cli_settings,
    redis_where,
    with_client,
)
from worker.core.errors import InvalidIdError
from worker.core.targets import check_target, parse_target, webhook_policy
from worker.ops import tracing


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
    settings = load_cli_settings()
    tokens_file = settings.threads_tokens_file
    if tokens_file is not None and not tokens_file.is_file():
        # Starting anyway would fail every container of those accounts, much later.
        why = "no such file" if not tokens_file.exists() else "not a regular file"
        raise CliError(f"invalid setting THREADS_TOKENS_FILE: {why}: {tokens_file}", EXIT_USAGE)
    tokens = token_source(settings)
    own = settings.secrets()  # the Redis password, the webhook secret
    setup_logging(settings.log_format, settings.log_level, lambda: [*tokens.known_secrets(), *own])
    if (
        settings.threads_access_token is None
        and settings.instagram_access_token is None
        and settings.threads_tokens_file is None
    ):
        raise CliError(
            "invalid setting THREADS_ACCESS_TOKEN: not set (nor INSTAGRAM_ACCESS_TOKEN, nor "
            "THREADS_TOKENS_FILE); the worker cannot call the API",
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


def cmd_serve(args: argparse.Namespace) -> int:
    from worker.ops.logs import setup_logging
    from worker.web.app import ServeRefusedError, check_exposure, serve
    from worker.web.auth import KeysError, KeySource

    no_core_dumps()
    settings = load_cli_settings()
    try:
        keys = KeySource.from_settings(settings)
        check_exposure(settings, keys)
    except (KeysError, ServeRefusedError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    token = settings.token()
    setup_logging(
        settings.log_format,
        settings.log_level,
        lambda: [*keys.secrets, *([token] if token else [])],
    )
    # asyncio's loop whatever EVENT_LOOP says: out of file descriptors, libuv (uvloop) accepts
    # and closes every queued connection, a key holder's request among them, where asyncio
    # stops accepting for a second while the connection guard closes idle connections.
    use_event_loop(EventLoop.ASYNCIO)
    traces = tracing.configure()  # README "Tracing": the enqueue spans of POST /v1/containers
    try:
        serve(settings, keys)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {settings.http_host}:{settings.http_port}: {exc}", EXIT_FAILURE
        ) from None
    finally:
        traces.shutdown()
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    import socket

    from worker.ops.health import check, is_local
    from worker.store.keys import Keys

    settings = load_cli_settings()
    host = None if args.any else (args.host or socket.gethostname())
    # Plain `health` (the HEALTHCHECK) vouches for this container's own worker process only.
    local = is_local if not (args.any or args.host) else None
    # A Redis that accepts connections but never answers must fail the check, not hang it.
    try:
        health = with_client(
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
