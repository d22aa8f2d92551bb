"""What an operator reads and steers: in-flight polls, recent final states, accounts, dead
letters; cancel, replay, discard. Shared by the HTTP API and console (``worker.web``) and the CLI.

Reads are bounded (pages, a scan limit); every write is one Lua script (``lua/cancel.lua``,
``lua/webhook_replay.lua``, ``lua/intake_replay.lua``) or one command, so an operator's action is
atomic with respect to the workers:

- **cancel** makes a live poll final ``CANCELLED`` with its one event (and its webhook delivery,
  when the poll has one), and ends its check job. A run that still holds the job finds the poll
  final and every write of it is refused (``record.lua``, ``publish_claim.lua``), as for a poll
  that ended any other way. A poll whose publish call may be under way is not cancelled.
- **replay** of a webhook dead letter creates its delivery job again (the same delivery id and
  body; the worker signs each attempt with a fresh timestamp); of an intake dead letter, puts its
  original fields back on the intake stream (the intake's rules apply again).
- **discard** deletes a dead letter.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from api_client.models import QuotaSnapshot, explain_error_message
from api_client.platforms import PLATFORMS
from config import Settings
from config.producers import DEFAULT_PRODUCER, PRODUCER_NAME
from worker.core.errors import InvalidIdError
from worker.core.history import cancel_entry
from worker.core.result import PollResult, stamp
from worker.core.states import SUCCESS_STATES, State
from worker.core.webhooks import body_for
from worker.store import scripts
from worker.store.jobdata import delivery_job
from worker.store.keys import Keys
from worker.store.queue import text
from worker.store.results import ResultStore
from worker.store.script_args import CancelArgs

T = TypeVar("T")

MAX_PAGE = 500
# Final-state events one request reads at most while looking for failures.
SCAN_LIMIT = 10_000
# Accounts the gauges and the console look at (most recently enqueued first).
ACCOUNTS_LIMIT = 5_000
MAX_REASON_LENGTH = 200
STATS_TTL_SECONDS = 2 * 3600  # worker.ops.stats keeps its hashes as long
# What intake.py appends to a value it cut short in a dead letter (it cannot be replayed).
TRUNCATED = "...[truncated]"
DEFAULT_ACCOUNT = "default"
# Prefix search (``find_ids``): ids returned, SCAN calls, and COUNT per call.
SEARCH_LIMIT = 50
SEARCH_CALLS = 20
SEARCH_COUNT = 1000
# The operators' actions kept (about), and how many the page of a container looks through.
AUDIT_MAX_LEN = 10_000
AUDIT_SCAN = 2_000

# A stream entry id: each part below 2**64 (what Redis takes; 20 digits may be over it), so 19
# digits at most. The API's document spells its patterns with these (worker.web.requests).
STREAM_ID_FORM = r"[0-9]{1,19}-[0-9]{1,19}"
# An in-flight page's cursor, "deadline:container id".
INFLIGHT_CURSOR_FORM = r"([0-9]{1,16}(?:\.[0-9]{1,3})?):([0-9]{1,32})"
_STREAM_ID = re.compile(rf"^{STREAM_ID_FORM}$")
_INFLIGHT_CURSOR = re.compile(rf"^{INFLIGHT_CURSOR_FORM}$")


class DeadLetterKind(StrEnum):
    INTAKE = "intake"
    WEBHOOKS = "webhooks"


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # never enqueued, or its result expired
    FINAL = "final"  # already final: nothing to cancel
    PUBLISHING = "publishing"  # a publish call may be under way: try again once it is recorded
    CHANGED = "changed"  # the id was enqueued again while cancelling, three times over


class ReplayOutcome(StrEnum):
    REPLAYED = "replayed"
    GONE = "gone"  # no such dead letter (discarded, replayed, trimmed)
    BUSY = "busy"  # a delivery of the same id is live
    TRUNCATED = "truncated"  # a value was cut short when dead-lettered: replaying it is wrong
    UNREADABLE = "unreadable"
    EMPTY = "empty"


def validate_stream_id(raw: object, *, what: str = "dead letter id") -> str:
    """A Redis stream entry id (``1795438388610-0``)."""
    value = raw.strip() if isinstance(raw, str) else ""
    if not _STREAM_ID.fullmatch(value):
        raise InvalidIdError(f"{what} must look like 1795438388610-0")
    return value


def _before(cursor: str | None) -> str | None:
    """The exclusive top of an XREVRANGE that goes on after ``cursor``; None: nothing can
    come before it (``0-0``, which Redis refuses as an exclusive end)."""
    if cursor is None:
        return "+"
    entry_id = validate_stream_id(cursor, what="cursor")
    if all(int(part) == 0 for part in entry_id.split("-")):
        return None
    return "(" + entry_id


def stream_ms(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    # Pass as ``cursor`` for the next page; None: this was the last one.
    next_cursor: str | None = None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class InflightPoll:
    container_id: str
    deadline_at: float
    result: PollResult | None  # None: listed, but its hash is gone (the reconciler removes it)


@dataclass(frozen=True, slots=True)
class FinalEvent:
    """One entry of ``{prefix}:events``."""

    id: str
    container_id: str
    status: str
    error_message: str | None
    account: str | None
    checks: int
    finalized_at: float | None
    last_error: str | None
    media_id: str | None
    # No field (an event written before Instagram): threads.
    platform: str = "threads"

    @classmethod
    def of(cls, entry_id: str, raw: Mapping[Any, Any]) -> FinalEvent:
        h = {text(k): text(v) for k, v in raw.items()}
        checks = h.get("checks", "")
        at = h.get("finalized_at", "")
        return cls(
            id=entry_id,
            container_id=h.get("container_id", ""),
            status=h.get("status", ""),
            error_message=h.get("error_message") or None,
            account=h.get("account") or None,
            checks=int(checks) if checks.isascii() and checks.isdigit() else 0,
            finalized_at=float(at) if at else stream_ms(entry_id),
            last_error=h.get("last_error") or None,
            media_id=h.get("media_id") or None,
            platform=h["platform"] if h.get("platform") in PLATFORMS else "threads",
        )

    @property
    def failed(self) -> bool:
        return self.status not in SUCCESS_STATES

    @property
    def error_explanation(self) -> str | None:
        return explain_error_message(self.error_message, self.platform) or None

    @property
    def reason(self) -> str:
        """What went wrong, readable: Meta's reason explained, else our last error."""
        if self.status == State.ERROR and self.error_message:
            return f"{self.error_message}: {self.error_explanation}"
        return self.last_error or self.error_explanation or ""


@dataclass(frozen=True, slots=True)
class AccountView:
    """One account's shared state (``{prefix}:account:{id}``) and cached quota. Token-free:
    whether its token was rejected, never the token or its fingerprint."""

    account: str
    last_seen_at: float | None = None
    throttled_until: float = 0.0
    throttle_level: int = 0
    throttled_total: int = 0
    throttled_since: float | None = None
    last_throttle_code: str | None = None
    last_throttled_at: float | None = None
    token_rejected: bool = False
    token_rejected_at: float | None = None
    token_rejected_reason: str | None = None
    token_rejected_code: str | None = None
    # The current token's lifecycle (lua/token.lua; from the tokens file or a refresh).
    token_expires_at: float | None = None
    token_issued_at: float | None = None
    token_seen_at: float | None = None
    token_refreshed_at: float | None = None
    token_refreshes: int = 0
    token_refresh_failures: int = 0
    token_refresh_retry_at: float | None = None
    token_refresh_error: str | None = None
    quota: QuotaSnapshot | None = None

    @classmethod
    def of(
        cls, account: str, raw: Mapping[Any, Any], quota: Any, last_seen: float | None
    ) -> AccountView:
        h = {text(k): text(v) for k, v in raw.items()}
        snapshot = None
        if quota:
            try:
                snapshot = QuotaSnapshot.model_validate_json(quota)
            except ValueError:
                snapshot = None
        return cls(
            account=account,
            last_seen_at=last_seen,
            throttled_until=_float(h.get("throttled_until")) or 0.0,
            throttle_level=int(_float(h.get("throttle_level")) or 0),
            throttled_total=int(_float(h.get("throttled_total")) or 0),
            throttled_since=_float(h.get("throttled_since")),
            last_throttle_code=h.get("last_throttle_code") or None,
            last_throttled_at=_float(h.get("last_throttled_at")),
            token_rejected=bool(h.get("token_rejected_fp")),
            token_rejected_at=_float(h.get("token_rejected_at")),
            token_rejected_reason=h.get("token_rejected_reason") or None,
            token_rejected_code=h.get("token_rejected_code") or None,
            token_expires_at=_float(h.get("token_expires_at")),
            token_issued_at=_float(h.get("token_issued_at")),
            token_seen_at=_float(h.get("token_seen_at")),
            token_refreshed_at=_float(h.get("token_refreshed_at")),
            token_refreshes=int(_float(h.get("token_refreshes")) or 0),
            token_refresh_failures=int(_float(h.get("token_refresh_failures")) or 0),
            token_refresh_retry_at=_float(h.get("token_refresh_retry_at")),
            token_refresh_error=h.get("token_refresh_error") or None,
            quota=snapshot,
        )

    def throttled(self, now: float) -> bool:
        return self.throttled_until > now

    def token_expires_in(self, now: float) -> float | None:
        return None if self.token_expires_at is None else self.token_expires_at - now

    def pause_left(self, now: float) -> float:
        return max(0.0, self.throttled_until - now)

    def throttled_for(self, now: float) -> float:
        """How long the current episode of throttling has lasted (0 when not throttled)."""
        if not self.throttled(now):
            return 0.0
        start = self.throttled_since or self.last_throttled_at or now
        return max(0.0, now - start)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kind: DeadLetterKind
    id: str
    reason: str
    # Intake: the entry's fields as they were (long values cut short); webhooks: container_id,
    # status, generation, delivery_id, url (redacted), attempts.
    fields: dict[str, str] = field(default_factory=dict)
    # Intake: the id the entry had on the intake stream.
    entry_id: str = ""
    # Intake: the named producer whose stream it came from ("" for the default stream).
    producer: str = ""
    # Webhooks: the signed body of the delivery, as sent (and parsed, None when it is not JSON).
    raw_body: str = field(default="", repr=False)
    body: Any = None
    # Webhooks: the exact URL the delivery was for (``url`` is its redacted form, for display);
    # a replay goes there, not to whatever the container's live poll says now.
    target: str = field(default="", repr=False)

    @property
    def at(self) -> float:
        return stream_ms(self.id)

    @property
    def replayable(self) -> bool:
        if self.kind is DeadLetterKind.WEBHOOKS:
            return bool(
                self.fields.get("container_id") and self.fields.get("generation") and self.raw_body
            )
        return bool(self.fields) and not any(v.endswith(TRUNCATED) for v in self.fields.values())


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which final events a list keeps (``AdminStore.finals``)."""

    failed_only: bool = False
    statuses: frozenset[str] | None = None
    account: str | None = None

    def matches(self, event: FinalEvent) -> bool:
        if self.failed_only and not event.failed:
            return False
        if self.statuses is not None and event.status not in self.statuses:
            return False
        return self.account is None or (event.account or DEFAULT_ACCOUNT) == self.account


@dataclass(frozen=True, slots=True)
class Found:
    """Ids found by prefix; ``complete``: every key was looked at."""

    ids: list[str]
    complete: bool


@dataclass(frozen=True, slots=True)
class Action:
    """One entry of ``{prefix}:audit``."""

    id: str
    action: str
    target: str
    reason: str
    actor: str
    outcome: str

    @property
    def at(self) -> float:
        return stream_ms(self.id)

    @classmethod
    def of(cls, entry_id: str, raw: Mapping[Any, Any]) -> Action:
        h = {text(k): text(v) for k, v in raw.items()}
        return cls(
            entry_id,
            h.get("action", ""),
            h.get("target", ""),
            h.get("reason", ""),
            h.get("actor", ""),
            h.get("outcome", ""),
        )


@dataclass(frozen=True, slots=True)
class Cancelled:
    outcome: CancelOutcome
    status: str = ""
    event_id: str = ""
    result: PollResult | None = None


@dataclass(frozen=True, slots=True)
class Replayed:
    outcome: ReplayOutcome
    # The new intake entry's id (intake replays).
    entry_id: str = ""


class AdminStore:
    """The operator's view of one deployment (one key prefix)."""

    def __init__(self, results: ResultStore) -> None:
        self.results = results
        self.redis: Redis = results.redis
        self.keys: Keys = results.keys
        self._cancel = scripts.register(self.redis, "cancel.lua")
        self._webhook_replay = scripts.register(self.redis, "webhook_replay.lua")
        self._intake_replay = scripts.register(self.redis, "intake_replay.lua")

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> AdminStore:
        return cls(ResultStore.from_settings(redis, settings))

    async def now(self) -> float:
        """Redis' clock (s): every "left", "ago" and "since" is measured on it."""
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1e6

    # ----- in flight ---------------------------------------------------------------------

    async def inflight(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        account: str | None = None,
        scan_limit: int = SCAN_LIMIT,
    ) -> Page[InflightPoll]:
        """Polls in flight by deadline, soonest first; ``cursor`` continues after a page.
        With ``account``, only that account's (``default``: enqueued without one); at most
        ``scan_limit`` polls are looked at per call (``next_cursor`` goes on)."""
        limit = _limit(limit)
        low: str = "-inf"
        after: tuple[float, str] | None = None
        if cursor:
            m = _INFLIGHT_CURSOR.fullmatch(cursor)
            if not m:
                raise InvalidIdError("cursor is not one this API returned")
            after = (float(m.group(1)), m.group(2))
            low = m.group(1)
        if account is not None:
            return await self._inflight_of(account, limit, low, after, scan_limit)
        # Members with the cursor's score come first in member order; skip those up to it.
        rows = await self.redis.zrangebyscore(
            self.keys.inflight, low, "+inf", start=0, num=limit + 1 + MAX_PAGE, withscores=True
        )
        picked: list[tuple[str, float]] = []
        for member, score in rows:
            cid = text(member)
            if after is not None and (score, cid) <= after:
                continue
            picked.append((cid, float(score)))
            if len(picked) > limit:
                break
        more = len(picked) > limit
        picked = picked[:limit]
        results = await self.results.load_many([cid for cid, _ in picked]) if picked else []
        total = int(await self.redis.zcard(self.keys.inflight))
        items = [
            InflightPoll(cid, score, r) for (cid, score), r in zip(picked, results, strict=True)
        ]
        nxt = f"{stamp(picked[-1][1])}:{picked[-1][0]}" if more and picked else None
        return Page(items, nxt, total)

    async def _inflight_of(
        self,
        account: str,
        limit: int,
        low: str,
        after: tuple[float, str] | None,
        scan_limit: int,
    ) -> Page[InflightPoll]:
        """``inflight`` of one account: pages of the sorted set, their hashes read and kept
        when the account matches, until ``limit`` are found or ``scan_limit`` looked at."""
        found: list[InflightPoll] = []
        seen = 0
        last: tuple[float, str] | None = after
        more = False
        while seen < scan_limit:
            batch = min(500, scan_limit - seen)
            lo = low if last is None else repr(last[0])
            rows = await self.redis.zrangebyscore(
                self.keys.inflight, lo, "+inf", start=0, num=batch + MAX_PAGE, withscores=True
            )
            fresh = [
                (text(m), float(sc))
                for m, sc in rows
                if last is None or (float(sc), text(m)) > last
            ][:batch]
            if not fresh:
                break
            results = await self.results.load_many([cid for cid, _ in fresh])
            for (cid, score), r in zip(fresh, results, strict=True):
                if len(found) >= limit:
                    more = True
                    break
                seen += 1
                last = (score, cid)
                if r is not None and (r.account or DEFAULT_ACCOUNT) == account:
                    found.append(InflightPoll(cid, score, r))
            if more:
                break
        else:
            more = True  # looked at scan_limit polls: there may be more
        total = int(await self.redis.zcard(self.keys.inflight))
        nxt = f"{stamp(last[0])}:{last[1]}" if more and last is not None else None
        return Page(found, nxt, total)

    async def inflight_counts(self, *, now: float, overdue_after: float) -> tuple[int, int]:
        """(in flight, in flight ``overdue_after`` seconds or more past their deadline)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.inflight)
            pipe.zcount(self.keys.inflight, "-inf", now - overdue_after)
            total, overdue = await pipe.execute()
        return int(total), int(overdue)

    # ----- final states --------------------------------------------------------------------

    async def finals(
        self,
        *,
        since_seconds: float,
        now: float,
        failed_only: bool = False,
        limit: int = 100,
        cursor: str | None = None,
        scan_limit: int = SCAN_LIMIT,
        statuses: frozenset[str] | None = None,
        account: str | None = None,
        until_seconds: float | None = None,
    ) -> Page[FinalEvent]:
        """Final states of the last ``since_seconds`` (up to ``until_seconds`` ago), newest
        first; failures only with ``failed_only``, of these ``statuses`` and this ``account``
        only when given. At most ``scan_limit`` events are read per call; ``next_cursor`` says
        where to go on when there may be more."""
        limit = _limit(limit)
        oldest = f"{int((now - since_seconds) * 1000)}-0"
        if cursor is None and until_seconds is not None:
            # Every entry of that millisecond and before it.
            top: str | None = str(max(0, int((now - until_seconds) * 1000)))
        else:
            top = _before(cursor)
        if top is None:
            return Page([], None)
        wanted = EventFilter(failed_only=failed_only, statuses=statuses, account=account)
        found: list[FinalEvent] = []
        scanned = 0
        last_id: str | None = None
        exhausted = False
        while len(found) < limit and scanned < scan_limit:
            batch = min(500, scan_limit - scanned)
            rows = await self.redis.xrevrange(self.keys.events, top, oldest, count=batch)
            if not rows:
                exhausted = True
                break
            for entry_id, raw in rows:
                last_id = text(entry_id)
                scanned += 1
                event = FinalEvent.of(last_id, raw)
                if wanted.matches(event):
                    found.append(event)
                    if len(found) >= limit:
                        break
            if len(rows) < batch and len(found) < limit:
                exhausted = True
                break
            top = "(" + (last_id or "0-0")
        nxt = None if exhausted or last_id is None else last_id
        return Page(found, nxt)

    # ----- accounts -------------------------------------------------------------------------

    async def accounts(self, *, limit: int = 100, cursor: str | None = None) -> Page[AccountView]:
        """Accounts by last enqueue, newest first; the default account (containers enqueued
        without one) first on the first page when it has any state."""
        limit = _limit(limit)
        offset = 0
        if cursor:
            if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 9:
                raise InvalidIdError("cursor is not one this API returned")
            offset = int(cursor)
        rows = await self.redis.zrevrange(
            self.keys.accounts, offset, offset + limit - 1, withscores=True
        )
        total = int(await self.redis.zcard(self.keys.accounts))
        names: list[tuple[str, float | None]] = [(text(m), float(s)) for m, s in rows]
        if offset == 0:
            names.insert(0, (DEFAULT_ACCOUNT, None))
        views = await self._account_views(names)
        if offset == 0 and views and views[0].account == DEFAULT_ACCOUNT:
            d = views[0]
            if not (d.throttle_level or d.throttled_total or d.token_rejected or d.quota):
                views = views[1:]
        more = offset + len(rows) < total
        return Page(views, str(offset + len(rows)) if more else None, total)

    async def all_accounts(self, *, limit: int = ACCOUNTS_LIMIT) -> list[AccountView]:
        """The ``limit`` most recently enqueued accounts and the default one (for gauges)."""
        rows = await self.redis.zrevrange(self.keys.accounts, 0, limit - 1, withscores=True)
        names = [(DEFAULT_ACCOUNT, None), *((text(m), float(s)) for m, s in rows)]
        return await self._account_views(names)

    async def _account_views(self, names: Sequence[tuple[str, float | None]]) -> list[AccountView]:
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in names:
                pipe.hgetall(self.keys.account(name))
                pipe.get(self.keys.quota(name))
            replies = await pipe.execute()
        return [
            AccountView.of(name, replies[2 * i], replies[2 * i + 1], seen)
            for i, (name, seen) in enumerate(names)
        ]

    # ----- dead letters ---------------------------------------------------------------------

    def dead_stream(self, kind: DeadLetterKind) -> str:
        if kind is DeadLetterKind.INTAKE:
            return self.keys.dead_letters
        return self.keys.webhook_dead_letters

    async def dead_letters(
        self, kind: DeadLetterKind, *, limit: int = 50, cursor: str | None = None
    ) -> Page[DeadLetter]:
        """Newest first; ``cursor``: the id of the last one seen."""
        limit = _limit(limit)
        stream = self.dead_stream(kind)
        top = _before(cursor)
        rows = [] if top is None else await self.redis.xrevrange(stream, top, "-", count=limit + 1)
        total = int(await self.redis.xlen(stream))
        letters = [_dead_letter(kind, text(i), raw) for i, raw in rows[:limit]]
        nxt = letters[-1].id if len(rows) > limit and letters else None
        return Page(letters, nxt, total)

    async def dead_letter(self, kind: DeadLetterKind, letter_id: str) -> DeadLetter | None:
        letter_id = validate_stream_id(letter_id)
        rows = await self.redis.xrange(self.dead_stream(kind), letter_id, letter_id)
        return _dead_letter(kind, letter_id, rows[0][1]) if rows else None

    async def dead_letter_counts(self) -> dict[DeadLetterKind, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind in DeadLetterKind:
                pipe.xlen(self.dead_stream(kind))
            counts = await pipe.execute()
        return {kind: int(n) for kind, n in zip(DeadLetterKind, counts, strict=True)}

    async def discard(self, kind: DeadLetterKind, letter_id: str) -> bool:
        """Delete a dead letter; False when there was none with that id."""
        letter_id = validate_stream_id(letter_id)
        return bool(await self.redis.xdel(self.dead_stream(kind), letter_id))

    async def replay(self, kind: DeadLetterKind, letter_id: str) -> Replayed:
        letter_id = validate_stream_id(letter_id)
        if kind is DeadLetterKind.INTAKE:
            # Back to the stream it came from: its producer's scope applies again (a replay
            # onto the default stream would give a producer's entry the default's powers).
            letter = await self.dead_letter(kind, letter_id)
            if letter is None:
                return Replayed(ReplayOutcome.GONE)
            producer = letter.producer or DEFAULT_PRODUCER
            if not PRODUCER_NAME.match(producer):
                return Replayed(ReplayOutcome.UNREADABLE)
            reply = await self._intake_replay(
                keys=[self.keys.dead_letters, self.keys.intake_of(producer)],
                args=[letter_id, TRUNCATED],
            )
            outcome = ReplayOutcome(text(reply[0]))
            return Replayed(outcome, text(reply[1]) if len(reply) > 1 else "")
        letter = await self.dead_letter(kind, letter_id)
        if letter is None:
            return Replayed(ReplayOutcome.GONE)
        cid = letter.fields.get("container_id", "")
        generation = letter.fields.get("generation", "")
        raw_body = letter.raw_body
        if not (cid and generation and raw_body):
            return Replayed(ReplayOutcome.UNREADABLE)
        job_id = letter.fields.get("delivery_id") or self.keys.webhook_job_id(cid, generation)
        now_ms = int(await self.now() * 1000)
        data = delivery_job(cid, generation, raw_body.encode(), letter.target or None, now_ms)
        reply = await self._webhook_replay(
            keys=[
                self.keys.webhook_dead_letters,
                self.keys.webhook_queue,
                self.keys.job_data(job_id),
                self.keys.job_lock(job_id),
                self.keys.job_tries(job_id),
                self.keys.result(cid),
            ],
            args=[letter_id, job_id, data, self.results.result_ttl_seconds * 1000, generation],
        )
        return Replayed(ReplayOutcome(text(reply)))

    # ----- search ---------------------------------------------------------------------------

    async def find_ids(
        self,
        prefix: str,
        *,
        limit: int = SEARCH_LIMIT,
        calls: int = SEARCH_CALLS,
        count: int = SEARCH_COUNT,
    ) -> Found:
        """Container ids with a result hash that start with ``prefix`` (digits): ``SCAN MATCH
        {prefix}:result:<digits>* COUNT count``, at most ``calls`` calls (so at most about
        ``calls * count`` keys looked at, whatever the size of the database) and ``limit`` ids.
        ``complete`` is False when the scan stopped before the end. Where SCAN cannot be used
        (a Redis Cluster client, or an ACL that refuses it), the ids of the polls in flight and
        of the last ``count * calls`` final events instead."""
        if not prefix.isascii() or not prefix.isdigit():
            return Found([], True)
        if type(self.redis) is Redis:
            try:
                return await self._scan_ids(prefix, limit, calls, count)
            except ResponseError:
                pass  # NOPERM: the fallback below
        return await self._recent_ids(prefix, limit, calls * count)

    async def _scan_ids(self, prefix: str, limit: int, calls: int, count: int) -> Found:
        pattern = self.keys.result(prefix) + "*"
        start = len(self.keys.result_prefix)
        found: set[str] = set()
        cursor = 0
        for _ in range(calls):
            cursor, names = await self.redis.scan(cursor, match=pattern, count=count)
            for name in names:
                cid = text(name)[start:]
                if cid.isascii() and cid.isdigit():
                    found.add(cid)
            if cursor == 0 or len(found) >= limit:
                break
        return Found(sorted(found)[:limit], cursor == 0 and len(found) <= limit)

    async def _recent_ids(self, prefix: str, limit: int, budget: int) -> Found:
        found: set[str] = set()
        live = await self.redis.zrange(self.keys.inflight, 0, budget - 1)
        found.update(c for c in map(text, live) if c.startswith(prefix))
        rows = await self.redis.xrevrange(self.keys.events, "+", "-", count=budget)
        for _, raw in rows:
            cid = text(raw.get(b"container_id", raw.get("container_id", b"")))
            if cid.startswith(prefix):
                found.add(cid)
        return Found(sorted(found)[:limit], False)

    # ----- the operators' actions -----------------------------------------------------------

    async def note_action(
        self,
        *,
        action: str,
        target: str,
        reason: str,
        actor: str,
        outcome: str,
    ) -> str:
        """Keep what an operator did (and why, and with which key) in ``{prefix}:audit``;
        its stream id (Redis time)."""
        fields = {
            "action": action,
            "target": target,
            "reason": clean_reason(reason),
            "actor": actor[:MAX_REASON_LENGTH],
            "outcome": outcome,
        }
        return text(
            await self.redis.xadd(self.keys.audit, fields, maxlen=AUDIT_MAX_LEN, approximate=True)  # type: ignore[arg-type]
        )

    async def actions(
        self, *, target: str | None = None, limit: int = 50, scan: int = AUDIT_SCAN
    ) -> list[Action]:
        """The latest actions, newest first; with ``target``, the ones on it among the last
        ``scan``."""
        rows = await self.redis.xrevrange(
            self.keys.audit, "+", "-", count=scan if target else _limit(limit)
        )
        out: list[Action] = []
        for entry_id, raw in rows:
            a = Action.of(text(entry_id), raw)
            if target is None or a.target == target:
                out.append(a)
                if len(out) >= limit:
                    break
        return out

    # ----- cancel ---------------------------------------------------------------------------

    async def cancel(
        self, container_id: str, *, reason: str | None = None, actor: str | None = None
    ) -> Cancelled:
        """Make a live poll final CANCELLED (see the module docstring); ``actor`` (the name of
        the operator's key) is kept with the reason in ``last_error``."""
        note = clean_reason(reason)
        who = f" by {clean_reason(actor)}" if actor else ""
        last_error = f"cancelled{who}: {note}" if note else f"cancelled{who}"
        for _ in range(3):
            current = await self.results.load(container_id)
            if current is None:
                return Cancelled(CancelOutcome.UNKNOWN)
            if current.final:
                return Cancelled(CancelOutcome.FINAL, current.status, result=current)
            now = await self.now()
            hook: tuple[str, str, bytes] = ("", "", b"")
            if current.webhook_url or self.results.default_webhook_url:
                view = dataclasses.replace(
                    current,
                    status=State.CANCELLED,
                    final=True,
                    last_error=last_error,
                    finalized_at=float(stamp(now)),
                    next_check_at=None,
                )
                delivery = self.keys.webhook_job_id(current.container_id, current.generation)
                webhook = self.results.webhook_for(
                    current, body_for(view, delivery), int(now * 1000)
                )
                if webhook is not None:
                    hook = (webhook.job_id, self.keys.job_data(webhook.job_id), webhook.data)
            own = self.keys.result(container_id)
            job_id = self.keys.job_id(container_id, current.generation)
            reply = await scripts.call(
                self._cancel,
                keys=[
                    own,
                    self.keys.inflight,
                    self.keys.events,
                    self.keys.queue,
                    self.keys.webhook_queue,
                    self.keys.job_data(job_id),
                    self.keys.job_tries(job_id),
                    hook[1] or own,
                    # This minute's counts as the clock read above says (the script asks for
                    # the right one when the minute turned since) and the parent as read.
                    self.keys.stats(int(now) // 60),
                    self.keys.result(current.carousel_parent) if current.carousel_parent else own,
                    self.keys.history(container_id),
                ],
                args=CancelArgs(
                    container_id=container_id,
                    generation=current.generation,
                    job_id_base=self.keys.job_id_base(container_id),
                    last_error=last_error,
                    ttl_seconds=self.results.result_ttl_seconds,
                    events_max_len=self.results.events_max_len,
                    webhook_job_id=hook[0],
                    webhook_job_data=hook[2],
                    stats_prefix=self.keys.stats_prefix,
                    stats_ttl_seconds=STATS_TTL_SECONDS,
                    history=cancel_entry(last_error),
                    result_prefix=self.keys.result_prefix,
                    check_prefix=self.keys.check_job_prefix,
                ).argv(),
            )
            outcome, detail = text(reply[0]), text(reply[1])
            if outcome == "changed":
                continue
            if outcome == "cancelled":
                after = await self.results.load(container_id)
                return Cancelled(CancelOutcome.CANCELLED, State.CANCELLED, detail, after)
            return Cancelled(CancelOutcome(outcome), detail, result=current)
        return Cancelled(CancelOutcome.CHANGED)


def clean_reason(reason: str | None) -> str:
    """An operator's note, kept printable and short (it is stored in ``last_error``)."""
    if not reason:
        return ""
    kept = "".join(c if c.isprintable() else " " for c in reason).strip()
    return kept[:MAX_REASON_LENGTH]


def _dead_letter(kind: DeadLetterKind, letter_id: str, raw: Mapping[Any, Any]) -> DeadLetter:
    h = {text(k): v for k, v in raw.items()}
    reason = text(h.get("reason"))
    if kind is DeadLetterKind.INTAKE:
        try:
            decoded = json.loads(text(h.get("fields")) or "{}")
        except ValueError:
            decoded = {}
        fields = {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
        return DeadLetter(
            kind,
            letter_id,
            reason,
            fields,
            entry_id=text(h.get("entry_id")),
            producer=text(h.get("producer")),
        )
    body_raw = h.get("body")
    body_text = text(body_raw) if body_raw is not None else ""
    try:
        body = json.loads(body_text) if body_text else None
    except ValueError:
        body = None
    names = ("container_id", "status", "generation", "delivery_id", "url", "attempts", "at")
    fields = {n: text(h.get(n)) for n in names if h.get(n) is not None}
    return DeadLetter(
        kind, letter_id, reason, fields, raw_body=body_text, body=body, target=text(h.get("target"))
    )


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None
