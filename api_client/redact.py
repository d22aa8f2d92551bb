"""Scrubbing of access tokens from any text that may reach a log, an exception or Redis.

The token may travel in the query string, so aiohttp's own messages (which print the URL) and any
URL we build are suspect. Two passes: the known secret values themselves, then anything shaped
like an ``access_token`` parameter or a bearer credential, in case a token we were never told about
(a refreshed one, another account's) shows up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

_PATTERNS = (
    re.compile(r"(access_token=)[^&\s'\"<>]+", re.IGNORECASE),
    re.compile(r"(access_token['\"]?\s*[:=]\s*['\"]?)[^&\s'\",}<>]+", re.IGNORECASE),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE),
)


def clean(text: str, secrets: Iterable[str | None] = ()) -> bool:
    """True when ``redact`` would leave ``text`` as it is: it holds none of the ``secrets`` and
    neither word a pattern needs. (False does not mean it holds one.)"""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            return False
    lowered = text.lower()
    return "access_token" not in lowered and "bearer" not in lowered


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    for secret in secrets:
        # Very short "secrets" would shred ordinary text; real tokens are long.
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    # Every pattern needs one of these words; most text has neither (one pass instead of three).
    lowered = text.lower()
    if "access_token" in lowered or "bearer" in lowered:
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text
