"""Token lifecycle, pure: the tokens file's format, when a token is due for a refresh, and the
back-off of a failed refresh. No I/O, no clock: every ``now`` is Redis' time, passed in.

The tokens file (``THREADS_TOKENS_FILE``) maps a user id to a token, given either as a string
(the original format) or as an object ``{"token": "...", "expires_at": ..., "issued_at": ...}``
whose times are Unix seconds or ISO 8601 strings (a time without a zone is UTC).

A Threads long-lived token lasts 60 days from its issue or last refresh, and can be refreshed
once it is at least 24 hours old and while it has not expired (Meta's "Long-lived tokens" page).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# Room for ~100,000 accounts; a larger file is a mistake (or an attack on the worker's memory).
MAX_TOKENS_FILE_BYTES = 32 << 20
# Meta: a long-lived token can be refreshed once it is at least 24 hours old.
MIN_REFRESH_AGE_SECONDS = 86400.0
# An ``expires_in`` beyond this is not believed (a year: Meta documents 60 days).
MAX_EXPIRES_IN_SECONDS = 366 * 86400


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One account's token as the file gives it. ``repr`` never shows the token."""

    token: str = field(repr=False)
    expires_at: float | None = None
    issued_at: float | None = None
    # In TOKENS_REFRESHED_FILE only: the fingerprint of the tokens file's token this one was
    # refreshed from (it applies while the tokens file still holds that token).
    base: str | None = None


def parse_time(value: Any) -> float:
    """Unix seconds (a number) or an ISO 8601 string, as Unix seconds; ValueError otherwise.

    Never quotes the value (the caller's file holds tokens)."""
    if isinstance(value, bool):
        raise ValueError("a time must be Unix seconds or an ISO 8601 string")  # noqa: TRY004
    if isinstance(value, int | float):
        t = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("a time string must be ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        t = parsed.timestamp()
    else:
        raise ValueError("a time must be Unix seconds or an ISO 8601 string")  # noqa: TRY004
    if not math.isfinite(t) or t < 0 or t > 1e11:
        raise ValueError("a time out of range")
    return t


def _entry(value: Any) -> TokenEntry:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("an empty token")
        return TokenEntry(value.strip())
    if not isinstance(value, dict):
        raise ValueError("expected a token string or an object with a token")  # noqa: TRY004
    token = value.get("token")
    if not isinstance(token, str) or not token.strip():
        raise ValueError("an object without a token string")
    unknown = set(value) - {"token", "expires_at", "issued_at", "base"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown)[:5])}")
    expires = value.get("expires_at")
    issued = value.get("issued_at")
    base = value.get("base")
    if base is not None and not isinstance(base, str):
        raise ValueError("base must be a string")
    return TokenEntry(
        token.strip(),
        parse_time(expires) if expires is not None else None,
        parse_time(issued) if issued is not None else None,
        base or None,
    )


def parse_token_entries(raw: bytes) -> dict[str, TokenEntry]:
    """Pure: the tokens file's content, or ValueError (never quoting it: it holds tokens)."""
    if len(raw) > MAX_TOKENS_FILE_BYTES:
        raise ValueError(f"larger than {MAX_TOKENS_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004 - a parse error, as every other one here
            "expected a JSON object of user id -> token (string or object)"
        )
    out: dict[str, TokenEntry] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError("expected a JSON object of user id -> token (string or object)")
        try:
            out[key.strip()] = _entry(value)
        except ValueError as exc:
            # The key is a user id, not a secret; the value is never quoted.
            raise ValueError(f"account {key.strip()[:40]}: {exc}") from None
    return out


def entry_json(entry: TokenEntry, *, base: str | None = None) -> dict[str, Any]:
    """How a refreshed entry is written back (times as Unix seconds)."""
    out: dict[str, Any] = {"token": entry.token}
    if entry.expires_at is not None:
        out["expires_at"] = round(entry.expires_at, 3)
    if entry.issued_at is not None:
        out["issued_at"] = round(entry.issued_at, 3)
    if base is not None:
        out["base"] = base
    return out


def expiry_from_refresh(now: float, expires_in: Any) -> float:
    """A refresh answer's ``expires_in`` (seconds from now, Redis' time) as a Unix time."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise ValueError("expires_in is not a number")  # noqa: TRY004
    if not math.isfinite(expires_in) or expires_in <= 0 or expires_in > MAX_EXPIRES_IN_SECONDS:
        raise ValueError("expires_in out of range")
    return now + float(expires_in)


class RefreshVerdict(StrEnum):
    DUE = "due"
    TOO_YOUNG = "too_young"  # less than 24 h old (Meta refuses it)
    NOT_YET = "not_yet"  # outside the margin
    EXPIRED = "expired"  # past its expiry: only a new sign-in helps
    REJECTED = "rejected"  # the API rejected it already
    BACKING_OFF = "backing_off"  # a failed refresh waits for its retry time


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """What is known of one account's current token (times: Unix seconds, Redis' clock).

    ``issued_at``: from the file, the last refresh, or else when a worker first saw this token
    (a lower bound of its age: it is at least that old)."""

    expires_at: float | None
    issued_at: float | None
    rejected: bool = False
    retry_at: float = 0.0


def refresh_verdict(facts: TokenFacts, *, now: float, margin: float) -> RefreshVerdict:
    """Whether a token should be refreshed now.

    A token of unknown expiry that is at least 24 h old is due: a refresh is the only way to
    learn its expiry, and it costs one call per token (the answer's ``expires_in`` is kept)."""
    if facts.rejected:
        return RefreshVerdict.REJECTED
    if facts.expires_at is not None and now >= facts.expires_at:
        return RefreshVerdict.EXPIRED
    if facts.issued_at is None or now - facts.issued_at < MIN_REFRESH_AGE_SECONDS:
        return RefreshVerdict.TOO_YOUNG
    if facts.expires_at is not None and facts.expires_at - now > margin:
        return RefreshVerdict.NOT_YET
    if now < facts.retry_at:
        return RefreshVerdict.BACKING_OFF
    return RefreshVerdict.DUE
