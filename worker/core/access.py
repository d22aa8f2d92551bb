"""Who may use the HTTP API and the console: API keys, roles, console sessions. Pure.

Keys come from ``API_KEYS`` (read-write), ``API_READ_KEYS`` (read-only) and the files
``API_KEYS_FILE`` / ``API_READ_KEYS_FILE`` (the same lists, re-read when they change): keys are
separated by commas or white space, ``#`` starts a comment. A request presents one as
``Authorization: Bearer <key>``; it is compared with every configured key in constant time
(``hmac.compare_digest`` over SHA-256 digests, so neither the length nor the position of a match
shows in the timing).

The console (a browser cannot send a bearer header on a plain navigation) logs in once with a key
and then carries a session cookie: ``v1.<expiry>.<key fingerprint>.<HMAC(key, ...)>``. It holds no
key and needs no server-side state or shared secret: any replica verifies it with the key it
names, and removing a key ends its sessions. A state-changing request made with the cookie must
also carry the CSRF token derived from the session (``csrf_token``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 256
SESSION_VERSION = "v1"
SESSION_SECONDS = 12 * 3600.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(StrEnum):
    READ = "read"  # GET only
    WRITE = "write"  # everything


class BadKeyError(ValueError):
    """A configured API key that cannot be used (too short, too long, not printable ASCII)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    role: Role
    fingerprint: str  # 12 hex digits of SHA-256: names the key in sessions and logs
    digest: bytes = field(repr=False)
    secret: str = field(repr=False)

    @classmethod
    def of(cls, secret: str, role: Role) -> ApiKey:
        digest = hashlib.sha256(secret.encode()).digest()
        return cls(role, digest.hex()[:12], digest, secret)


def split_keys(text: str, *, what: str = "API_KEYS") -> list[str]:
    """The keys in a setting or a keys file: comma or white-space separated, ``#`` comments."""
    keys: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for raw in line.replace(",", " ").split():
            check_key(raw, what=what)
            keys.append(raw)
    return keys


def check_key(key: str, *, what: str = "API_KEYS") -> None:
    if not (key.isascii() and key.isprintable()):
        raise BadKeyError(f"{what}: a key must be printable ASCII")
    if len(key) < MIN_KEY_LENGTH:
        raise BadKeyError(f"{what}: a key must be at least {MIN_KEY_LENGTH} characters")
    if len(key) > MAX_KEY_LENGTH:
        raise BadKeyError(f"{what}: a key must be at most {MAX_KEY_LENGTH} characters")


@dataclass(frozen=True, slots=True)
class KeyRing:
    keys: tuple[ApiKey, ...] = ()

    @classmethod
    def build(cls, write: Iterable[str] = (), read: Iterable[str] = ()) -> KeyRing:
        """A key given both ways is read-write."""
        roles: dict[str, Role] = {k: Role.READ for k in read}
        roles.update({k: Role.WRITE for k in write})
        return cls(tuple(ApiKey.of(k, r) for k, r in sorted(roles.items(), key=lambda kv: kv[0])))

    @property
    def enabled(self) -> bool:
        """False: no key configured (allowed only on loopback); every request is let in."""
        return bool(self.keys)

    def match(self, presented: str) -> ApiKey | None:
        """The key equal to ``presented``, compared with every key in constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for key in self.keys:
            # No early exit: the time does not depend on which key (if any) matched.
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def by_fingerprint(self, fingerprint: str) -> ApiKey | None:
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(fingerprint.encode(), key.fingerprint.encode()):
                found = key
        return found


def bearer(header: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <key>`` ("" for a malformed header)."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return ""
    return value.strip()


def _mac(key: ApiKey, message: str) -> str:
    return hmac.new(key.secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue_session(key: ApiKey, *, now: float, seconds: float = SESSION_SECONDS) -> str:
    expiry = int(now + seconds)
    body = f"{SESSION_VERSION}.{expiry}.{key.fingerprint}"
    return f"{body}.{_mac(key, 'session.' + body)}"


def verify_session(ring: KeyRing, token: str | None, *, now: float) -> ApiKey | None:
    if not token or len(token) > 200:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != SESSION_VERSION or not parts[1].isascii():
        return None
    if not parts[1].isdigit():
        return None
    key = ring.by_fingerprint(parts[2])
    if key is None or int(parts[1]) <= now:
        return None
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(key, "session." + body), parts[3]):
        return None
    return key


def csrf_token(key: ApiKey, session: str) -> str:
    """What a console form carries next to its session cookie (a cross-site page cannot read
    it, so it cannot forge the request)."""
    return _mac(key, "csrf." + session)[:40]


def verify_csrf(key: ApiKey, session: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(key, session), str(given))


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    status: int = 200
    code: str = ""
    message: str = ""
    key: ApiKey | None = None
    via: str = ""  # "bearer", "session", "open" (no keys configured)


def authorize(
    ring: KeyRing,
    *,
    method: str,
    authorization: str | None,
    session: str | None,
    csrf: str | None,
    now: float,
) -> Verdict:
    """May this request go ahead? 401 without a valid credential, 403 for a read-only key on a
    state-changing method or a session request without its CSRF token."""
    unsafe = method.upper() not in SAFE_METHODS
    if not ring.enabled:
        return Verdict(True, via="open")
    presented = bearer(authorization)
    if presented is not None:
        if presented == "":
            return Verdict(False, 401, "unauthorized", "Authorization must be 'Bearer <API key>'")
        key = ring.match(presented)
        if key is None:
            return Verdict(False, 401, "unauthorized", "unknown API key")
        via = "bearer"
    else:
        key = verify_session(ring, session, now=now)
        if key is None:
            return Verdict(
                False, 401, "unauthorized", "an API key is required (Authorization: Bearer)"
            )
        via = "session"
        if unsafe and not verify_csrf(key, session or "", csrf):
            return Verdict(False, 403, "csrf_failed", "missing or wrong CSRF token", key, via)
    if unsafe and key.role is not Role.WRITE:
        return Verdict(False, 403, "forbidden", "this API key is read-only", key, via)
    return Verdict(True, key=key, via=via)


def is_loopback(host: str) -> bool:
    """``HTTP_HOST`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
