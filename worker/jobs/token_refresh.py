"""The token keeper: every worker publishes its tokens' fingerprints and expiry to the account
hashes (never a token), and, with ``TOKEN_REFRESH=1``, refreshes the tokens due, each once.

One refresh, step by step (each account's token on its own):

1. ``acquire``: a lease in Redis (``SET NX PX``, with the next number of the account's fence
   counter), taken only while Redis still names this token as the account's current one: a
   token another worker refreshed already is "moved", not refreshed again.
2. the refresh call (``GET /refresh_access_token?grant_type=th_refresh_token``; an Instagram
   account's, ``instagram:<id>``: ``ig_refresh_token`` on the Instagram host; the account's
   ``Platform`` says which: ``api_client.platforms``).
3. ``guard``: still the latest lease holder (a worker frozen past its lease, whose lease another
   took since, is fenced here and writes nothing); extends the lease and reads Redis' time, from
   which the new expiry is counted (now + ``expires_in``).
4. the token written back atomically to the tokens file (or ``TOKENS_REFRESHED_FILE``), only if
   the file still holds the token that was refreshed.
5. ``commit``: the new fingerprint and expiry in the account hash, the lease freed.

A failed refresh counts in the account hash and is tried again after a back-off (doubling, up
to ``TOKEN_REFRESH_BACKOFF_MAX_SECONDS``); an answer that rejects the token (190) marks the
account as the check jobs do. Decisions (age, margin, retry) use Redis' clock.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from api_client.client import ThreadsClient
from api_client.errors import GraphAPIError, MalformedResponseError, ThreadsError
from api_client.parsing import parse_json_object
from api_client.platforms import THREADS, Platform, platform_of_account
from api_client.policy import ErrorKind, classify
from config import Settings
from worker.core.planner import graph_code
from worker.core.tokens import (
    RefreshVerdict,
    TokenEntry,
    TokenFacts,
    expiry_from_refresh,
    refresh_verdict,
)
from worker.jobs.tokens import AccountTokenSource, WriteBackError, fingerprint
from worker.ops import metrics
from worker.ops.loops import every
from worker.store.accounts import AccountStore, RefreshLease, TokenRecord

log = logging.getLogger("threads_poller.tokens")

# Accounts synced at once (one small script each).
SYNC_CONCURRENCY = 64


def refresh_base(api_base_url: str) -> str:
    """The refresh endpoint is not versioned: ``https://graph.threads.net/v1.0`` ->
    ``https://graph.threads.net``."""
    url = URL(api_base_url.rstrip("/"))
    parts = [p for p in url.path.split("/") if p]
    if parts and parts[-1].startswith("v") and parts[-1][1:].replace(".", "").isdigit():
        parts = parts[:-1]
    return str(url.with_path("/" + "/".join(parts))).rstrip("/")


@dataclass(frozen=True, slots=True)
class Refreshed:
    token: str
    expires_in: Any

    def __repr__(self) -> str:  # never the token
        return f"Refreshed(expires_in={self.expires_in!r})"


async def refresh_call(
    session: aiohttp.ClientSession,
    api_base_url: str,
    token: str,
    *,
    platform: Platform = THREADS,
    timeout_seconds: float | None = None,
) -> Refreshed:
    """One refresh, with the platform's grant. ThreadsError (redacted) when it fails; never
    quotes a token."""
    # The documented access_token query parameter, whatever THREADS_AUTH_MODE says.
    client = ThreadsClient(
        session,
        base_url=refresh_base(api_base_url),
        timeout_seconds=timeout_seconds,
        platform=platform,
    )
    try:
        http_status, body, _ = await client.request(
            "GET",
            "/refresh_access_token",
            params={"grant_type": platform.refresh_grant},
            token=token,
        )
        payload = parse_json_object(http_status, body)
    except ThreadsError as exc:
        raise ThreadsClient.scrub(exc, token) from None
    new = payload.get("access_token")
    if not isinstance(new, str) or not new.strip():
        raise MalformedResponseError("refresh answer without an access_token")
    return Refreshed(new.strip(), payload.get("expires_in"))


class TokenKeeper:
    """One worker's part of the token lifecycle (see the module's docstring)."""

    def __init__(
        self,
        accounts: AccountStore,
        tokens: AccountTokenSource,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        owner: str,
    ) -> None:
        self.accounts = accounts
        self.tokens = tokens
        self.session = session
        self.settings = settings
        self.owner = owner
        self.lease_ms = int((settings.http_timeout_seconds + 30.0) * 1000)

    async def sync(self) -> dict[str, tuple[TokenEntry, TokenRecord]]:
        """Publish every file account's token state; what Redis knows of each."""
        entries = self.tokens.entries()
        out: dict[str, tuple[TokenEntry, TokenRecord]] = {}
        sem = asyncio.Semaphore(SYNC_CONCURRENCY)

        async def one(account: str, entry: TokenEntry) -> None:
            async with sem:
                record = await self.accounts.sync_token(
                    account,
                    fingerprint(entry.token),
                    expires_at=entry.expires_at,
                    issued_at=entry.issued_at,
                )
            if record is not None:
                out[account] = (entry, record)

        await asyncio.gather(*(one(a, e) for a, e in entries.items()))
        return out

    async def refresh_due(self) -> dict[str, str]:
        """Sync, then refresh each token due (with ``TOKEN_REFRESH``); the outcome of each try
        by account."""
        synced = await self.sync()
        if not self.settings.token_refresh:
            return {}
        margin = self.settings.token_refresh_margin_days * 86400
        outcomes: dict[str, str] = {}
        for account, (entry, record) in synced.items():
            facts = TokenFacts(
                expires_at=record.expires_at,
                issued_at=record.issued_at or record.seen_at,
                rejected=record.rejected,
                retry_at=record.retry_at,
            )
            if refresh_verdict(facts, now=record.now, margin=margin) is RefreshVerdict.DUE:
                outcomes[account] = await self.refresh_account(account, entry.token)
        return outcomes

    async def refresh_account(self, account: str, token: str) -> str:
        """Refresh one token (if this worker gets the lease): ``refreshed``, ``failed``,
        ``rejected``, ``fenced``, ``moved`` or ``held``."""
        lease = await self.accounts.acquire_refresh(
            account, fingerprint(token), owner=self.owner, lease_ms=self.lease_ms
        )
        if isinstance(lease, str):
            return lease
        platform = platform_of_account(account)
        try:
            answer = await refresh_call(
                self.session,
                self.settings.api_base_url(platform),
                token,
                platform=platform,
                timeout_seconds=self.settings.http_timeout_seconds,
            )
        except ThreadsError as exc:
            return await self._failed(lease, token, exc)
        return await self.write_back(lease, token, answer)

    async def write_back(self, lease: RefreshLease, old_token: str, answer: Refreshed) -> str:
        now = await self.accounts.guard_refresh(lease, lease_ms=self.lease_ms)
        if now is None:
            return self._fenced(lease, "before writing the tokens file")
        try:
            expires_at = expiry_from_refresh(now, answer.expires_in)
        except ValueError as exc:
            return await self._failed(lease, old_token, MalformedResponseError(str(exc)))
        entry = TokenEntry(answer.token, expires_at, now)
        try:
            await asyncio.to_thread(self.tokens.write_refreshed, lease.account, old_token, entry)
        except WriteBackError as exc:
            return await self._failed(lease, old_token, exc)
        if not await self.accounts.commit_refresh(
            lease, fingerprint(answer.token), expires_at=expires_at, issued_at=now
        ):
            # The file holds the new token already; the next sync publishes it.
            return self._fenced(lease, "after writing the tokens file")
        metrics.note_token_refresh("refreshed")
        log.info(
            "access token refreshed",
            extra={"account": lease.account, "expires_at": round(expires_at, 3)},
        )
        return "refreshed"

    def _fenced(self, lease: RefreshLease, when: str) -> str:
        metrics.note_token_refresh("fenced")
        log.warning(
            "token refresh: lease lost %s; another worker took over",
            when,
            extra={"account": lease.account, "fence": lease.fence},
        )
        return "fenced"

    async def _failed(self, lease: RefreshLease, token: str, exc: Exception) -> str:
        rejected = isinstance(exc, ThreadsError) and classify(exc) is ErrorKind.TOKEN
        code = graph_code(exc) if isinstance(exc, GraphAPIError) else ""
        reason = f"{type(exc).__name__}: {exc}"
        s = self.settings
        retry_at = await self.accounts.fail_refresh(
            lease,
            reason,
            base=s.token_refresh_backoff_seconds,
            cap=s.token_refresh_backoff_max_seconds,
            rejected_fp=fingerprint(token) if rejected else None,
            code=code,
        )
        if retry_at is None:
            return self._fenced(lease, "after a failed refresh")
        outcome = "rejected" if rejected else "failed"
        metrics.note_token_refresh(outcome)
        log.error(
            "token refresh failed: %s",
            reason,
            extra={"account": lease.account, "retry_at": round(retry_at, 3)},
        )
        return outcome

    async def run_forever(self) -> None:
        async def once() -> None:
            await self.refresh_due()

        await every("token refresh", self.settings.token_sync_seconds, once, logger=log)
