"""The producer's and reader's commands of ``threads-poller``: ``enqueue`` (or, with ``--intake``,
an XADD to the intake stream), ``status``, ``history`` and ``wait``.

Ids come as arguments or on stdin; every id is validated before any is written ("nothing
enqueued"), then sent MAX_BATCH at a time through ``worker.client``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from config import Settings
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    T,
    load_cli_settings,
    with_client,
)
from worker.client.client import EnqueueOutcome, PollerClient
from worker.core.errors import InvalidIdError, ScopeError
from worker.core.history import HistoryEvent, describe
from worker.core.ids import MAX_BATCH, validate_id
from worker.core.result import PollResult
from worker.core.states import is_success
from worker.core.tracing import TraceparentError, optional_traceparent

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


def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = load_cli_settings()
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

    # The options every enqueue of this command shares (a carousel's, or each batch's).
    options: dict[str, Any] = {
        "account": args.account,
        "force": args.force,
        "publish": args.publish,
        "webhook_url": args.webhook_url,
        "reply_to": args.reply_to,
        "producer": args.producer,
        "traceparent": args.traceparent,
        "platform": args.platform,
    }

    async def work(c: PollerClient) -> list[EnqueueOutcome]:
        if args.carousel is not None:
            children = [part for part in args.children.split(",") if part.strip()]
            return [await c.enqueue_carousel(args.carousel, children, **options)]
        return await _in_batches(ids, lambda batch: c.enqueue_many(batch, **options))

    try:
        outcomes = with_client(settings, work)
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
        entries = with_client(
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
                    platform=args.platform,
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


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_cli_settings()
    ids = _read_ids(args)

    async def work(client: PollerClient) -> list[tuple[str, PollResult | None]]:
        return list(zip(ids, await _in_batches(ids, client.get_many), strict=True))

    try:
        results = with_client(settings, work)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for cid, result in results:
        print(json.dumps(_result_json(cid, result)) if args.json else _result_line(cid, result))
    return EXIT_OK if all(r is not None for _, r in results) else EXIT_FAILURE


def cmd_history(args: argparse.Namespace) -> int:
    settings = load_cli_settings()

    async def work(client: PollerClient) -> tuple[list[HistoryEvent], bool]:
        events = await client.history(args.id)
        return events, bool(events) or await client.get(args.id) is not None

    try:
        events, found = with_client(settings, work)
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
    settings = load_cli_settings()
    try:
        result = with_client(settings, lambda c: c.wait(args.id, timeout=args.timeout))
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
