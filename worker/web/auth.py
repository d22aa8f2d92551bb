"""The API keys of a running server: from the settings and the keys files, re-read on change.

The decisions (which key, which role, sessions, CSRF) are pure: ``worker.web.access``. This
module only gathers the keys: ``API_KEYS`` and ``API_KEYS_FILE`` (read-write), ``API_READ_KEYS``
and ``API_READ_KEYS_FILE`` (read-only). A file is looked at again at most once a second and read
again when its size or modification time changed, so keys rotate without a restart; a file that
has become unreadable or invalid keeps the keys it had (and says so in the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from config import Settings
from config.producers import ProducersError, split_scoped_key
from worker.web.access import BadKeyError, KeyRing, check_key, split_keys

log = logging.getLogger("threads_poller.web")

CHECK_EVERY_SECONDS = 1.0


class KeysError(Exception):
    """The configured keys cannot be used (the message names the setting)."""


@dataclass
class _File:
    path: Path
    what: str
    stamp: tuple[int, int] | None = None
    keys: tuple[str, ...] = ()

    def read(self) -> tuple[str, ...]:
        st = self.path.stat()
        keys = tuple(split_keys(self.path.read_text(encoding="utf-8"), what=self.what, lines=True))
        self.stamp, self.keys = (st.st_mtime_ns, st.st_size), keys
        return keys

    def changed(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return self.stamp is not None
        return (st.st_mtime_ns, st.st_size) != self.stamp


class KeySource:
    def __init__(
        self,
        *,
        write: str | None = None,
        read: str | None = None,
        write_file: Path | None = None,
        read_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        producers: Iterable[str] = (),
    ) -> None:
        # The named producers a read-write key may be bound to ("NAME=KEY").
        self._producers = tuple(producers)
        try:
            self._write = tuple(split_keys(write or "", what="API_KEYS"))
            self._read = tuple(split_keys(read or "", what="API_READ_KEYS"))
        except BadKeyError as exc:
            raise KeysError(f"invalid setting {exc}") from None
        self._files = {
            role: _File(path, what)
            for role, path, what in (
                ("write", write_file, "API_KEYS_FILE"),
                ("read", read_file, "API_READ_KEYS_FILE"),
            )
            if path is not None
        }
        for f in self._files.values():
            try:
                f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeysError(f"invalid setting {f.what}: cannot read {f.path}: {exc}") from None
            except BadKeyError as exc:
                raise KeysError(f"invalid setting {exc} (in {f.path})") from None
        self._clock = clock
        self._checked = clock()
        try:
            self._ring = self._build()
        except BadKeyError as exc:
            raise KeysError(f"invalid setting {exc}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeySource:
        return cls(
            write=settings.api_keys.get_secret_value() if settings.api_keys else None,
            read=settings.api_read_keys.get_secret_value() if settings.api_read_keys else None,
            write_file=settings.api_keys_file,
            read_file=settings.api_read_keys_file,
            producers=settings.producer_scopes().scopes,
        )

    def _bind(self, items: Iterable[str], what: str) -> tuple[list[str], dict[str, str]]:
        """Plain keys and "NAME=KEY" items: the keys, and which are bound to which producer."""
        keys: list[str] = []
        bound: dict[str, str] = {}
        for item in items:
            try:
                name, key = split_scoped_key(item, self._producers)
            except ProducersError as exc:
                raise BadKeyError(f"{what}: {exc}") from None
            if name is not None:
                check_key(key, what=what)
                bound[key] = name
            keys.append(key)
        return keys, bound

    def _build(self) -> KeyRing:
        write_items = self._write + (self._files["write"].keys if "write" in self._files else ())
        read = self._read + (self._files["read"].keys if "read" in self._files else ())
        write, bound = self._bind(write_items, "API_KEYS")
        return KeyRing.build(write, read, bound)

    @property
    def secrets(self) -> list[str]:
        """Every configured key (for the log's redaction)."""
        return [k.secret for k in self._ring.keys]

    def ring(self) -> KeyRing:
        now = self._clock()
        if now - self._checked < CHECK_EVERY_SECONDS or not self._files:
            return self._ring
        self._checked = now
        reread = False
        for f in self._files.values():
            if not f.changed():
                continue
            try:
                f.read()
                reread = True
            except (OSError, UnicodeDecodeError, BadKeyError) as exc:
                log.error(  # noqa: TRY400 - one line; the reason is in it
                    "%s: keeping the keys read before: %s", f.what, exc, extra={"path": str(f.path)}
                )
                st = _stat(f.path)
                f.stamp = st  # do not retry a broken file every second; retry once it changes
        if reread:
            try:
                self._ring = self._build()
            except BadKeyError as exc:
                # A key bound to a producer that is not configured: not taken for a plain key.
                log.error("%s; keeping the keys read before", exc)  # noqa: TRY400
                return self._ring
            log.info("API keys re-read", extra={"keys": len(self._ring.keys)})
        return self._ring


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
