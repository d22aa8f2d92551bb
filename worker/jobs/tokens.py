"""Where the worker gets an account's access token. Tokens never travel in job arguments and are
never written to Redis; only a short fingerprint is, to recognise a token already rejected.

Lookup order for a container's account: the tokens file (``THREADS_TOKENS_FILE``, a JSON object
``{"<user id>": "<token>"}``, re-read when its modification time changes), then the environment
variable ``THREADS_ACCESS_TOKEN_<user id>``, then ``THREADS_ACCESS_TOKEN``. Accounts are per
platform (``api_client.platforms``): an Instagram account is ``instagram:<user id>`` in the
tokens file, ``INSTAGRAM_ACCESS_TOKEN_<user id>`` in the environment, and falls back to
``INSTAGRAM_ACCESS_TOKEN``.

The tokens file is judged like every secrets file (``config.secrets``) on each load: one that
others may read is not loaded (``SECRET_FILE_MODE_CHECK=refuse``, the default: the previous
tokens stay) or loaded with an ERROR line (``warn``).

An entry may carry its expiry (``worker.core.tokens``: a string, or ``{"token", "expires_at",
"issued_at"}``). A refreshed token (``worker.jobs.token_refresh``) is written back atomically to
the tokens file, or, when ``TOKENS_REFRESHED_FILE`` is set (a read-only mounted secret), to that
file, whose entries name the tokens file's token they replace (``base``, its fingerprint): a new
token put in the tokens file by hand wins over an older refresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from api_client.platforms import DEFAULT_PLATFORM, platform_of_account, user_id_of
from config.secrets import FileModeCheck, mode_advice, mode_problem
from worker.core.tokens import (
    MAX_TOKENS_FILE_BYTES,
    TokenEntry,
    entry_json,
    parse_token_entries,
)

log = logging.getLogger("threads_poller.tokens")

DEFAULT_ACCOUNT = "default"


def fingerprint(token: str) -> str:
    """A stable, non-reversible tag for a token (12 hex digits of SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def parse_tokens(raw: bytes) -> dict[str, str]:
    """Pure: the tokens file's tokens by account, or ValueError (never quoting the file)."""
    return {k: e.token for k, e in parse_token_entries(raw).items()}


def _read_raw(path: Path) -> bytes:
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError("not a regular file")  # a FIFO would block the worker's loop
    with path.open("rb") as f:
        return f.read(MAX_TOKENS_FILE_BYTES + 1)


def _read_tokens(path: Path) -> dict[str, TokenEntry]:
    return parse_token_entries(_read_raw(path))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a 0600 temporary file in the same directory, fsynced,
    then renamed over it (readers see the old file or the new one, never a half-written one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        # The rename itself survives a crash once the directory is synced.
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class WriteBackError(Exception):
    """A refreshed token could not be written back (the message never holds a token)."""


class TokenSource(Protocol):
    async def token_for(self, account: str | None) -> str | None: ...

    def known_secrets(self) -> list[str]:
        """Every token this source can hand out, for log redaction."""
        ...


class _Watched:
    """One JSON tokens file, re-read when its modification time changes."""

    def __init__(self, path: Path, setting: str) -> None:
        self.path = path
        self.setting = setting
        self.mtime: float | None = None
        self.entries: dict[str, TokenEntry] = {}


class AccountTokenSource:
    """Per-account tokens from a file and the environment, with the default token last."""

    def __init__(
        self,
        default: SecretStr | None,
        tokens_file: Path | None = None,
        environ: Mapping[str, str] | None = None,
        recheck_seconds: float = 1.0,
        mode_check: FileModeCheck = FileModeCheck.REFUSE,
        refreshed_file: Path | None = None,
        platform_defaults: Mapping[str, str] | None = None,
    ) -> None:
        self._default = default.get_secret_value() if default else None
        # Other platforms' fallback tokens, by platform name (INSTAGRAM_ACCESS_TOKEN).
        self._platform_defaults = dict(platform_defaults or {})
        self._file = tokens_file
        self._main = _Watched(tokens_file, "THREADS_TOKENS_FILE") if tokens_file else None
        self._over = (
            _Watched(refreshed_file, "TOKENS_REFRESHED_FILE")
            if refreshed_file and tokens_file
            else None
        )
        self._environ = os.environ if environ is None else environ
        self._recheck = recheck_seconds
        self._mode_check = mode_check
        self._checked_at = 0.0
        self._loaded = False
        self._tokens: dict[str, str] = {}
        self._effective: dict[str, TokenEntry] = {}
        self._secrets: list[str] | None = None
        self._secrets_for: dict[str, str] | None = None
        self._reload()

    @property
    def writes_to(self) -> Path | None:
        """Where a refreshed token is written: the separate file when set, else the tokens
        file."""
        if self._over is not None:
            return self._over.path
        return self._file

    def _reload(self, *, force: bool = False) -> None:
        if self._main is None:
            return
        now = time.monotonic()
        if not force and self._loaded and now - self._checked_at < self._recheck:
            return
        self._checked_at = now
        self._loaded = True
        changed = self._load(self._main, missing_ok=False)
        if self._over is not None:
            changed = self._load(self._over, missing_ok=True) or changed
        if changed:
            self._combine()

    def _load(self, w: _Watched, *, missing_ok: bool) -> bool:
        """Re-read one file if it changed; True when its entries changed."""
        try:
            st = w.path.stat()
            mtime = st.st_mtime
        except FileNotFoundError:
            if missing_ok:
                gone = bool(w.entries)
                w.entries, w.mtime = {}, -1.0
                return gone
            return self._unreadable(w, "FileNotFoundError")
        except OSError as exc:
            return self._unreadable(w, type(exc).__name__)
        if mtime == w.mtime:
            return False
        problem = mode_problem(st.st_mode, st.st_uid, os.geteuid())
        if problem is not None:
            log.error(
                "tokens file %s: %s; %s",
                "ignored" if self._mode_check is FileModeCheck.REFUSE else "loaded anyway",
                problem,
                mode_advice(w.setting),
                extra={"path": str(w.path)},
            )
            if self._mode_check is FileModeCheck.REFUSE:
                w.mtime = mtime
                return False
        try:
            data = _read_tokens(w.path)
        except (OSError, ValueError) as exc:
            # Never echo the content: it holds tokens. Keep the previous tokens. (A ValueError
            # names the account and field at fault, never a value.)
            # (A JSON or UTF-8 error's own text may quote the file: only its class name.)
            why = str(exc) if type(exc) is ValueError else type(exc).__name__
            log.error(  # noqa: TRY400 - the traceback could quote the file, which holds tokens
                "tokens file ignored: %s", why, extra={"path": str(w.path)}
            )
            w.mtime = mtime
            return False
        w.entries = data
        w.mtime = mtime
        log.info("tokens file loaded", extra={"path": str(w.path), "accounts": len(data)})
        return True

    def _unreadable(self, w: _Watched, why: str) -> bool:
        if w.mtime != -1.0:
            log.error("tokens file unreadable: %s", why, extra={"path": str(w.path)})
        w.mtime = -1.0
        return False

    def _combine(self) -> None:
        main = self._main.entries if self._main else {}
        over = self._over.entries if self._over else {}
        effective = dict(main)
        for account, entry in over.items():
            base = main.get(account)
            # A refresh applies while the tokens file still holds the token it came from.
            if base is not None and entry.base == fingerprint(base.token):
                effective[account] = entry
        self._effective = effective
        self._tokens = {k: e.token for k, e in effective.items()}
        self._secrets = None

    def entries(self) -> dict[str, TokenEntry]:
        """Every account's token from the files (a refreshed one where it applies)."""
        self._reload()
        return dict(self._effective)

    def entry_for(self, account: str) -> TokenEntry | None:
        self._reload()
        return self._effective.get(account)

    async def token_for(self, account: str | None) -> str | None:
        """The token of an account key (``Platform.account_key``), else its platform's
        fallback token."""
        platform = platform_of_account(account or "")
        user_id = user_id_of(account or "")
        if user_id and user_id != DEFAULT_ACCOUNT:
            self._reload()
            token = self._tokens.get(account or "") or self._environ.get(
                f"{platform.token_env}_{user_id}"
            )
            if token:
                return token
        if platform is DEFAULT_PLATFORM:
            return self._default
        return self._platform_defaults.get(platform.name.value)

    def write_refreshed(self, account: str, old_token: str, new: TokenEntry) -> None:
        """Write a refreshed token back (atomically); WriteBackError when the file no longer
        holds ``old_token`` for the account (someone replaced it: theirs wins) or cannot be
        written. Never quotes a token."""
        if self._main is None:
            raise WriteBackError("no THREADS_TOKENS_FILE to write to")
        self._reload(force=True)
        if self._tokens.get(account) != old_token:
            raise WriteBackError(f"the tokens of account {account} changed meanwhile")
        try:
            if self._over is not None:
                base = self._main.entries[account]
                raw: dict[str, Any] = {}
                if self._over.path.exists():
                    raw = json.loads(_read_raw(self._over.path).decode("utf-8"))
                raw[account] = entry_json(new, base=fingerprint(base.token))
                write_atomically(self._over.path, json.dumps(raw, indent=1).encode())
            else:
                raw = json.loads(_read_raw(self._main.path).decode("utf-8"))
                raw[account] = entry_json(new)
                write_atomically(self._main.path, json.dumps(raw, indent=1).encode())
        except (OSError, ValueError) as exc:
            raise WriteBackError(f"cannot write {self.writes_to}: {type(exc).__name__}") from None
        self._reload(force=True)

    def known_secrets(self) -> list[str]:
        # Called for every log record (redaction): keep it a list lookup, rebuilt on reload.
        if self._secrets is None or self._secrets_for is not self._tokens:
            secrets = list(self._tokens.values())
            # Every token of both files (a superseded one may still be in flight somewhere).
            for w in (self._main, self._over):
                if w is not None:
                    secrets += [e.token for e in w.entries.values()]
            secrets += [
                v
                for k, v in self._environ.items()
                if k.startswith(("THREADS_ACCESS_TOKEN", "INSTAGRAM_ACCESS_TOKEN")) and v
            ]
            if self._default:
                secrets.append(self._default)
            secrets += self._platform_defaults.values()
            self._secrets, self._secrets_for = list(dict.fromkeys(secrets)), self._tokens
        return self._secrets
