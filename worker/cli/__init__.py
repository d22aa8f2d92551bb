"""``threads-poller``: run the worker, feed it, read from it, simulate the API, demo it.

``main`` is the console script (pyproject.toml); ``parser`` holds every command and flag, and the
commands live by who runs them: ``producer`` (enqueue, status, history, wait), ``services``
(worker, serve, health, simulate, demo) and ``operator`` (inflight, failures, accounts,
dead-letters, cancel, quota, acl), all on ``common`` (exit codes, settings, a client). The
arrows run one way (an import-linter contract in pyproject.toml).

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

import os
import signal
import sys
from collections.abc import Sequence

from worker.cli.common import CliError
from worker.cli.parser import build_parser

__all__ = ["main"]

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
