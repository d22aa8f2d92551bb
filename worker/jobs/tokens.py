"""Where the worker gets an account's access token. Tokens never travel in job arguments and are
never written to Redis; only a short fingerprint is, to recognise a token already rejected.

Lookup order for a container's account: the tokens file (``THREADS_TOKENS_FILE``, a JSON object
``{"<user id>": "<token>"}``, re-read when its modification time changes), then the environment
variable ``THREADS_ACCESS_TOKEN_<user id>``, then ``THREADS_ACCESS_TOKEN``.

The tokens file is judged like every secrets file (``config.secrets``) on each load: one that
others may read is not loaded (``SECRET_FILE_MODE_CHECK=refuse``, the default: the previous
tokens stay) or loaded with an ERROR line (``warn``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from config.secrets import FileModeCheck, mode_advice, mode_problem

log = logging.getLogger("threads_poller.tokens")

DEFAULT_ACCOUNT = "default"


def fingerprint(token: str) -> str:
    """A stable, non-reversible tag for a token (12 hex digits of SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


# Room for ~100,000 accounts; a larger file is a mistake (or an attack on the worker's memory).
MAX_TOKENS_FILE_BYTES = 32 << 20


def parse_tokens(raw: bytes) -> dict[str, str]:
    """Pure: the tokens file's content, or ValueError (never quoting it: it holds tokens)."""
    if len(raw) > MAX_TOKENS_FILE_BYTES:
        raise ValueError(f"larger than {MAX_TOKENS_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise ValueError("expected a JSON object of user id -> token strings")
    return data


def _read_tokens(path: Path) -> dict[str, str]:
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError("not a regular file")  # a FIFO would block the worker's loop
    with path.open("rb") as f:
        return parse_tokens(f.read(MAX_TOKENS_FILE_BYTES + 1))


class TokenSource(Protocol):
    async def token_for(self, account: str | None) -> str | None: ...

    def known_secrets(self) -> list[str]:
        """Every token this source can hand out, for log redaction."""
        ...


class StaticTokenSource:
    """One token for every container: ``THREADS_ACCESS_TOKEN``."""

    def __init__(self, token: SecretStr | None) -> None:
        self._token = token

    async def token_for(self, account: str | None) -> str | None:
        return self._token.get_secret_value() if self._token else None

    def known_secrets(self) -> list[str]:
        return [self._token.get_secret_value()] if self._token else []


class AccountTokenSource:
    """Per-account tokens from a file and the environment, with the default token last."""

    def __init__(
        self,
        default: SecretStr | None,
        tokens_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        recheck_seconds: float = 1.0,
        mode_check: FileModeCheck = FileModeCheck.REFUSE,
    ) -> None:
        self._default = default.get_secret_value() if default else None
        self._file = tokens_file
        self._environ = os.environ if environ is None else environ
        self._recheck = recheck_seconds
        self._mode_check = mode_check
        self._mtime: float | None = None
        self._checked_at = 0.0
        self._tokens: dict[str, str] = {}
        self._secrets: list[str] | None = None
        self._secrets_for: dict[str, str] | None = None
        self._reload()

    def _reload(self) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if self._mtime is not None and now - self._checked_at < self._recheck:
            return
        self._checked_at = now
        try:
            st = self._file.stat()
            mtime = st.st_mtime
        except OSError as exc:
            if self._mtime != -1.0:
                log.error(  # noqa: TRY400 - a traceback adds nothing here
                    "tokens file unreadable: %s",
                    type(exc).__name__,
                    extra={"path": str(self._file)},
                )
            self._mtime = -1.0
            return
        if mtime == self._mtime:
            return
        problem = mode_problem(st.st_mode, st.st_uid, os.geteuid())
        if problem is not None:
            log.error(
                "tokens file %s: %s; %s",
                "ignored" if self._mode_check is FileModeCheck.REFUSE else "loaded anyway",
                problem,
                mode_advice("THREADS_TOKENS_FILE"),
                extra={"path": str(self._file)},
            )
            if self._mode_check is FileModeCheck.REFUSE:
                self._mtime = mtime
                return
        try:
            data = _read_tokens(self._file)
        except (OSError, ValueError) as exc:
            # Never echo the content: it holds tokens. Keep the previous tokens.
            log.error(  # noqa: TRY400 - the traceback could quote the file, which holds tokens
                "tokens file ignored: %s", type(exc).__name__, extra={"path": str(self._file)}
            )
            self._mtime = mtime
            return
        self._tokens = {k.strip(): v.strip() for k, v in data.items()}
        self._mtime = mtime
        log.info("tokens file loaded", extra={"path": str(self._file), "accounts": len(data)})

    async def token_for(self, account: str | None) -> str | None:
        if account and account != DEFAULT_ACCOUNT:
            self._reload()
            token = self._tokens.get(account) or self._environ.get(
                f"THREADS_ACCESS_TOKEN_{account}"
            )
            if token:
                return token
        return self._default

    def known_secrets(self) -> list[str]:
        # Called for every log record (redaction): keep it a list lookup, rebuilt on reload.
        if self._secrets is None or self._secrets_for is not self._tokens:
            secrets = list(self._tokens.values())
            secrets += [
                v for k, v in self._environ.items() if k.startswith("THREADS_ACCESS_TOKEN") and v
            ]
            if self._default:
                secrets.append(self._default)
            self._secrets, self._secrets_for = secrets, self._tokens
        return self._secrets
