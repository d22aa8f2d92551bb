"""The operator's reads (``worker.store.admin``): in-flight polls, recent final states,
accounts, dead letters, the search by id prefix, the audit of actions. Every read is bounded (a
page, a scan limit).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.core.errors import InvalidIdError
from worker.core.result import stamp
from worker.store.admin.views import (
    ACCOUNTS_LIMIT,
    AUDIT_SCAN,
    DEFAULT_ACCOUNT,
    INFLIGHT_CURSOR,
    MAX_PAGE,
    SCAN_LIMIT,
    SEARCH_CALLS,
    SEARCH_COUNT,
    SEARCH_LIMIT,
    AccountView,
    Action,
    DeadLetter,
    DeadLetterKind,
    EventFilter,
    FinalEvent,
    Found,
    InflightPoll,
    Page,
    dead_letter_of,
    page_limit,
    stream_top,
    validate_stream_id,
)
from worker.store.keys import Keys
from worker.store.queue import text
from worker.store.results import ResultStore


class AdminReads:
    """The operator's reads of one deployment (one key prefix); ``AdminStore`` adds the
    actions."""

    def __init__(self, results: ResultStore) -> None:
        self.results = results
        self.redis: Redis = results.redis
        self.keys: Keys = results.keys

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
        limit = page_limit(limit)
        low: str = "-inf"
        after: tuple[float, str] | None = None
        if cursor:
            m = INFLIGHT_CURSOR.fullmatch(cursor)
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
        limit = page_limit(limit)
        oldest = f"{int((now - since_seconds) * 1000)}-0"
        if cursor is None and until_seconds is not None:
            # Every entry of that millisecond and before it.
            top: str | None = str(max(0, int((now - until_seconds) * 1000)))
        else:
            top = stream_top(cursor)
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
        limit = page_limit(limit)
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
        limit = page_limit(limit)
        stream = self.dead_stream(kind)
        top = stream_top(cursor)
        rows = [] if top is None else await self.redis.xrevrange(stream, top, "-", count=limit + 1)
        total = int(await self.redis.xlen(stream))
        letters = [dead_letter_of(kind, text(i), raw) for i, raw in rows[:limit]]
        nxt = letters[-1].id if len(rows) > limit and letters else None
        return Page(letters, nxt, total)

    async def dead_letter(self, kind: DeadLetterKind, letter_id: str) -> DeadLetter | None:
        letter_id = validate_stream_id(letter_id)
        rows = await self.redis.xrange(self.dead_stream(kind), letter_id, letter_id)
        return dead_letter_of(kind, letter_id, rows[0][1]) if rows else None

    async def dead_letter_counts(self) -> dict[DeadLetterKind, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind in DeadLetterKind:
                pipe.xlen(self.dead_stream(kind))
            counts = await pipe.execute()
        return {kind: int(n) for kind, n in zip(DeadLetterKind, counts, strict=True)}

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

    # ----- the operators' actions (the audit) ---------------------------------------------

    async def actions(
        self, *, target: str | None = None, limit: int = 50, scan: int = AUDIT_SCAN
    ) -> list[Action]:
        """The latest actions, newest first; with ``target``, the ones on it among the last
        ``scan``."""
        rows = await self.redis.xrevrange(
            self.keys.audit, "+", "-", count=scan if target else page_limit(limit)
        )
        out: list[Action] = []
        for entry_id, raw in rows:
            a = Action.of(text(entry_id), raw)
            if target is None or a.target == target:
                out.append(a)
                if len(out) >= limit:
                    break
        return out
