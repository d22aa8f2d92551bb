"""Who may use the HTTP API and the console: API keys, roles, console sessions. Pure.

Keys come from ``API_KEYS`` (read-write), ``API_READ_KEYS`` (read-only) and the files
``API_KEYS_FILE`` / ``API_READ_KEYS_FILE`` (the same lists, re-read when they change): keys are
separated by commas (in a file also by lines; a line starting with ``#`` is a comment). A
request presents one as ``Authorization: Bearer <key>``; it is compared with every configured
key in constant time (``hmac.compare_digest`` over SHA-256 digests, so neither the length nor the
position of a match shows in the timing).

The console (a browser cannot send a bearer header on a plain navigation) logs in once with a key
and then carries a session cookie: ``v2.<expiry>.<key fingerprint>.<nonce>.<HMAC(key, ...)>``. It
holds no key and needs no shared secret: any replica verifies it with the key it names, and
removing a key ends its sessions; the nonce is also kept in Redis until logout (the web layer
checks it), so that logging out ends the session, copies of the cookie included. A
state-changing request made with the cookie must also carry the CSRF token derived from the
session (``csrf_token``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 256
# v2: with the server-side nonce (v1 sessions, which had none, are no longer accepted).
SESSION_VERSION = "v2"
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
    # A read-write key bound to a named producer (API_KEYS "NAME=KEY"): it enqueues within
    # that producer's scope and reads; None: an operator's key (the default producer's scope
    # for enqueue, and cancel, replay, discard).
    producer: str | None = None

    @classmethod
    def of(cls, secret: str, role: Role, producer: str | None = None) -> ApiKey:
        digest = hashlib.sha256(secret.encode()).digest()
        return cls(role, digest.hex()[:12], digest, secret, producer)


def split_keys(text: str, *, what: str = "API_KEYS", lines: bool = False) -> list[str]:
    """The keys of a setting (comma-separated) or, with ``lines``, of a keys file (commas or one
    key a line; a line starting with ``#`` is a comment).

    Strict: a key is cut nowhere. White space inside an item, or a ``#`` that is not the start of
    a comment line, is refused naming ``what``, rather than keeping a part of a key (a key
    pasted with a space, or holding a ``#``, used to become another, shorter key)."""
    keys: list[str] = []
    rows = text.splitlines() if lines else [text]
    for row in rows:
        if lines and row.strip().startswith("#"):
            continue
        for raw in row.split(","):
            item = raw.strip()
            if not item:
                continue
            check_key(item, what=what)
            keys.append(item)
    return keys


def check_key(key: str, *, what: str = "API_KEYS") -> None:
    if any(c.isspace() for c in key) or "#" in key:
        how = "commas, or one a line; a comment is a line starting with #"
        raise BadKeyError(
            f"{what}: a key may not contain white space or '#' (keys are separated by "
            f"{how if what.endswith('_FILE') else 'commas'})"
        )
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
    def build(
        cls,
        write: Iterable[str] = (),
        read: Iterable[str] = (),
        producers: Mapping[str, str] | None = None,
    ) -> KeyRing:
        """A key given both ways is read-write; ``producers`` binds write keys to producers."""
        roles: dict[str, Role] = {k: Role.READ for k in read}
        roles.update({k: Role.WRITE for k in write})
        bound = producers or {}
        return cls(
            tuple(
                ApiKey.of(k, r, bound.get(k) if r is Role.WRITE else None)
                for k, r in sorted(roles.items(), key=lambda kv: kv[0])
            )
        )

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


def issue_session(key: ApiKey, *, now: float, nonce: str, seconds: float = SESSION_SECONDS) -> str:
    """A session cookie for ``key``; ``nonce`` (random, URL-safe) names the session on the
    server, which forgets it at logout: a copy of the cookie is dead from then on."""
    if not nonce.isalnum() or not nonce.isascii():
        raise ValueError("a session nonce is ASCII letters and digits")
    expiry = int(now + seconds)
    body = f"{SESSION_VERSION}.{expiry}.{key.fingerprint}.{nonce}"
    return f"{body}.{_mac(key, 'session.' + body)}"


def session_nonce(token: str) -> str:
    """The nonce of a session (of one ``verify_session`` accepted)."""
    return token.split(".")[3]


def verify_session(ring: KeyRing, token: str | None, *, now: float) -> ApiKey | None:
    if not token or len(token) > 200:
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != SESSION_VERSION or not parts[1].isascii():
        return None
    if not parts[1].isdigit() or not (parts[3].isascii() and parts[3].isalnum()):
        return None
    key = ring.by_fingerprint(parts[2])
    if key is None or int(parts[1]) <= now:
        return None
    body = ".".join(parts[:4])
    if not hmac.compare_digest(_mac(key, "session." + body), parts[4]):
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
    enqueue: bool = False,
) -> Verdict:
    """May this request go ahead? 401 without a valid credential, 403 for a read-only key on a
    state-changing method or a session request without its CSRF token, and for a producer's
    key on a change other than an enqueue (``enqueue``: the request is one)."""
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
    if unsafe and key.producer is not None and not enqueue:
        # A pipeline's key: it feeds and reads, it does not operate the deployment.
        return Verdict(
            False,
            403,
            "forbidden",
            f"this API key is producer {key.producer}'s: it may enqueue (POST /v1/containers) "
            "and read, not cancel or replay",
            key,
            via,
        )
    return Verdict(True, key=key, via=via)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def loopback_host(host: str | None) -> bool:
    """A ``Host`` header that names this machine (``localhost``, ``127.0.0.1``, ``[::1]``, with
    or without a port). Without keys, ``serve`` answers only these: a page of another site whose
    name an attacker pointed at 127.0.0.1 (DNS rebinding) sends its own name."""
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):
        end = name.find("]")
        name, rest = name[: end + 1], name[end + 1 :]
    else:
        name, _, port = name.partition(":")
        rest = ":" + port if port else ""
    if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
        return False
    return name in LOOPBACK_NAMES


def same_origin(origin: str | None, fetch_site: str | None, host: str | None) -> bool:
    """Whether a browser says this request comes from our own pages: ``Sec-Fetch-Site`` is
    ``same-origin`` (or ``none``: typed by the user), or ``Origin`` names this very host. A
    request that says neither is not taken for same-origin (what a cross-site form of an old
    browser would look like)."""
    if fetch_site is not None:
        site = fetch_site.strip().lower()
        if site in ("same-origin", "none"):
            return True
        if site in ("cross-site", "same-site"):
            return False
    if not origin or origin == "null" or not host:
        return False
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and rest.rstrip("/").lower() == host.lower()


def is_loopback(host: str) -> bool:
    """``HTTP_HOST`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
