"""The operator's commands of ``threads-poller``:

    inflight [--limit N]           polls in flight, soonest deadline first
    failures [--since 1h]          final states that are not FINISHED or PUBLISHED, with the reason
    accounts                       throttling, pause left, cached quota, rejected token yes/no
    dead-letters list|replay|discard [ID] [--kind intake|webhooks]
    cancel ID [--reason TEXT]      stop polling: final CANCELLED, one event
    quota USER_ID [--cached]       an account's publishing quota (an API call, or the cached copy)
    acl ROLE...                    the ACL SETUSER line of a least-privilege Redis user

The first five read and write through ``worker.store.admin``, as the HTTP API does, and
``--json`` prints the API's JSON shapes (``worker.web.views``), one object per line.

Exit codes: those of ``worker.cli``; ``cancel`` exits 1 when the container is unknown, already
final or publishing, ``dead-letters replay|discard`` exits 1 when there is no such dead letter or
it cannot be replayed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from config import Settings
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    load_cli_settings,
    with_client,
)
from worker.client.client import PollerClient
from worker.core.durations import format_duration, parse_duration
from worker.core.errors import InvalidIdError
from worker.core.ids import validate_id
from worker.store.admin import (
    AdminStore,
    CancelOutcome,
    DeadLetter,
    DeadLetterKind,
    ReplayOutcome,
    validate_stream_id,
)


def _admin(client: PollerClient, settings: Settings) -> AdminStore:
    return AdminStore.from_settings(client.redis, settings)


def _print(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))


def _ago(now: float, at: float | None) -> str:
    if not at:
        return "-"
    delta = now - at
    shown = format_duration(abs(delta)) if abs(delta) >= 1 else f"{abs(delta):.1f}s"
    return f"{shown} ago" if delta >= 0 else f"in {shown}"


def cmd_inflight(args: argparse.Namespace) -> int:
    from worker.web.context import stuck_after
    from worker.web.views import inflight_json

    settings = load_cli_settings()

    async def work(client: PollerClient) -> tuple[float, Any, int]:
        admin = _admin(client, settings)
        now = await admin.now()
        page = await admin.inflight(limit=args.limit)
        _, past = await admin.inflight_counts(now=now, overdue_after=stuck_after(settings))
        return now, page, past

    now, page, past = with_client(settings, work)
    if args.json:
        _print([inflight_json(p, now) for p in page.items])
        return EXIT_OK
    print(f"{page.total} in flight, {past} stuck past their deadline")
    for p in page.items:
        r = p.result
        status = f"{r.status} checks={r.checks}" if r else "(hash gone)"
        acct = f"  account={r.account}" if r and r.account else ""
        print(f"{p.container_id}  {status}  deadline {_ago(now, p.deadline_at)}{acct}")
    if page.next_cursor:
        print(f"... and {int(page.total or 0) - len(page.items)} more (--limit)")
    return EXIT_OK


def cmd_failures(args: argparse.Namespace) -> int:
    from worker.web.views import event_json

    settings = load_cli_settings()
    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EXIT_USAGE) from None

    async def work(client: PollerClient) -> tuple[float, Any]:
        admin = _admin(client, settings)
        now = await admin.now()
        return now, await admin.finals(
            since_seconds=since, now=now, failed_only=True, limit=args.limit
        )

    now, page = with_client(settings, work)
    if args.json:
        _print([event_json(e) for e in page.items])
        return EXIT_OK
    if not page.items:
        print(f"no failure in the last {format_duration(since)}")
    else:
        # A header, as inflight has: what the rows are (their count: at least, when paged).
        more = "+" if page.next_cursor else ""
        print(
            f"{len(page.items)}{more} failed in the last {format_duration(since)}, newest first "
            "(container  status  finalized  reason)"
        )
    for e in page.items:
        print(f"{e.container_id}  {e.status}  {_ago(now, e.finalized_at)}  {e.reason}")
    if page.next_cursor:
        print("... more (raise --limit, or shorten --since)")
    return EXIT_OK


def cmd_accounts(args: argparse.Namespace) -> int:
    from worker.web.views import account_json

    settings = load_cli_settings()

    async def work(client: PollerClient) -> tuple[float, Any]:
        admin = _admin(client, settings)
        return await admin.now(), await admin.accounts(limit=args.limit)

    now, page = with_client(settings, work)
    if args.json:
        _print([account_json(a, now) for a in page.items])
        return EXIT_OK
    if not page.items:
        print("no account yet")
    for a in page.items:
        parts = [a.account]
        if a.throttled(now):
            parts.append(
                f"THROTTLED pause left {format_duration(a.pause_left(now)) or '0s'} "
                f"(level {a.throttle_level}, for {format_duration(a.throttled_for(now))})"
            )
        else:
            parts.append("not throttled")
        if a.quota is not None:
            left = a.quota.posts_remaining
            parts.append(f"posts left {left if left is not None else 'unknown'}")
        else:
            parts.append("quota unknown")
        parts.append("token REJECTED" if a.token_rejected else "token ok")
        left = a.token_expires_in(now)
        if left is None:
            parts.append("expiry unknown")
        elif left <= 0:
            parts.append("token EXPIRED")
        else:
            parts.append(f"expires in {format_duration(left)}")
        if a.token_refresh_failures:
            parts.append(f"refresh FAILING ({a.token_refresh_failures}x)")
        print("  ".join(parts))
    return EXIT_OK


def _letter_line(d: DeadLetter) -> str:
    if d.kind is DeadLetterKind.WEBHOOKS:
        f = d.fields
        what = (
            f"container {f.get('container_id', '?')} {f.get('status', '')} "
            f"attempts={f.get('attempts', '?')}"
        )
    else:
        what = " ".join(f"{k}={v}" for k, v in d.fields.items()) or "(no fields)"
    return f"{d.kind.value:8} {d.id}  {what}  reason: {d.reason}"


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from worker.web.views import dead_letter_json

    settings = load_cli_settings()
    kinds = [DeadLetterKind(args.kind)] if args.kind else list(DeadLetterKind)
    if args.action == "list":

        async def listing(client: PollerClient) -> list[DeadLetter]:
            admin = _admin(client, settings)
            out: list[DeadLetter] = []
            for kind in kinds:
                out += (await admin.dead_letters(kind, limit=args.limit)).items
            return out

        letters = with_client(settings, listing)
        if args.json:
            _print([dead_letter_json(d) for d in letters])
        else:
            if not letters:
                print("no dead letters")
            for d in letters:
                print(_letter_line(d))
        return EXIT_OK
    if not args.id:
        raise CliError(f"dead-letters {args.action}: give the dead letter's ID", EXIT_USAGE)
    try:
        letter_id = validate_stream_id(args.id)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    async def act(client: PollerClient) -> tuple[str, DeadLetterKind | None]:
        admin = _admin(client, settings)
        found = [k for k in kinds if await admin.dead_letter(k, letter_id) is not None]
        if not found:
            return "gone", None
        if len(found) > 1:
            raise CliError(f"{letter_id} is in both streams: give --kind", EXIT_USAGE)
        kind = found[0]
        if args.action == "discard":
            return ("discarded" if await admin.discard(kind, letter_id) else "gone"), kind
        return (await admin.replay(kind, letter_id)).outcome.value, kind

    outcome, kind = with_client(settings, act)
    if args.json:
        print(
            json.dumps({"id": letter_id, "kind": kind.value if kind else None, "outcome": outcome})
        )
    if outcome in ("discarded", ReplayOutcome.REPLAYED.value):
        if not args.json:
            print(f"{letter_id}  {outcome} ({kind.value if kind else ''})")
        return EXIT_OK
    if not args.json:
        print(f"{letter_id}  not {args.action}ed: {outcome}")
    return EXIT_FAILURE


def cmd_cancel(args: argparse.Namespace) -> int:
    from worker.web.views import result_json

    settings = load_cli_settings()
    try:
        cid = validate_id(args.id)
    except InvalidIdError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    async def work(client: PollerClient) -> Any:
        return await _admin(client, settings).cancel(cid, reason=args.reason)

    done = with_client(settings, work)
    if args.json:
        row: dict[str, Any] = {
            "container_id": cid,
            "outcome": done.outcome.value,
            "status": done.status,
        }
        if done.result is not None:
            row["result"] = result_json(done.result)
        print(json.dumps(row))
    elif done.outcome is CancelOutcome.CANCELLED:
        print(f"{cid}  cancelled (final CANCELLED)")
    else:
        why = {
            CancelOutcome.UNKNOWN: "unknown (never enqueued, or its result expired)",
            CancelOutcome.FINAL: f"already final ({done.status})",
            CancelOutcome.PUBLISHING: "a publish call may be under way; try again in a moment",
            CancelOutcome.CHANGED: "enqueued again while cancelling; try again",
        }[done.outcome]
        print(f"{cid}  not cancelled: {why}")
    return EXIT_OK if done.outcome is CancelOutcome.CANCELLED else EXIT_FAILURE


def cmd_quota(args: argparse.Namespace) -> int:
    from api_client.errors import ThreadsError
    from api_client.platforms import PLATFORMS
    from worker.jobs.quota import get_quota
    from worker.store.accounts import AccountStore
    from worker.store.keys import Keys

    settings = load_cli_settings()

    async def work(client: PollerClient) -> dict[str, Any]:
        redis = client.redis
        if args.cached:
            account = PLATFORMS[args.platform].account_key(args.user_id)
            snap = await AccountStore(redis, Keys(settings.key_prefix)).load_quota(account)
            if snap is None:
                raise CliError(f"no cached quota for {args.user_id}", EXIT_FAILURE)
            return {
                "user_id": snap.user_id,
                "fetched_at": snap.fetched_at,
                **snap.limit.model_dump(),
            }
        limit = await get_quota(
            args.user_id, settings=settings, redis=redis, platform=args.platform
        )
        return {"user_id": args.user_id, **limit.model_dump()}

    try:
        data = with_client(settings, work)
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


def cmd_acl(args: argparse.Namespace) -> int:
    from worker.store.acl import acl_setuser

    prefix, cluster = args.prefix, args.cluster
    if prefix is None:
        settings = load_cli_settings()
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
