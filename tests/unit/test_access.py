"""API keys, roles, console sessions and CSRF (worker.web.access). Pure."""

from __future__ import annotations

import pytest

from worker.web.access import (
    SESSION_SECONDS,
    ApiKey,
    BadKeyError,
    KeyRing,
    Role,
    authorize,
    bearer,
    csrf_token,
    is_loopback,
    issue_session,
    loopback_host,
    same_origin,
    session_nonce,
    split_keys,
    verify_csrf,
    verify_session,
)

RW = "rw-key-0123456789abcdef"
RO = "ro-key-0123456789abcdef"
RING = KeyRing.build([RW], [RO])
NOW = 1_800_000_000.0


def test_split_keys_commas_lines_comments() -> None:
    text = f"# keys of the pipeline\n{RW}, {RO}\n\n  {RW}x\n  # rotated in\n"
    assert split_keys(text, what="API_KEYS_FILE", lines=True) == [RW, RO, RW + "x"]
    assert split_keys(f" {RW} ,{RO},") == [RW, RO]
    assert split_keys("") == []


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        # Once cut at "#" (a 16-character key from a longer one) or split at the space.
        (f"{RW}#not-a-comment", False),
        (f"{RW} {RO}", False),
        (f"{RW}\n{RO}", False),
        (f"{RW}  # rotated in", True),
        (f"{RW}\t{RO}", True),
    ],
)
def test_what_cannot_be_a_key_is_refused_naming_the_variable(text: str, lines: bool) -> None:
    what = "API_KEYS_FILE" if lines else "API_KEYS"
    with pytest.raises(BadKeyError, match=f"^{what}: a key may not contain white space or '#'"):
        split_keys(text, what=what, lines=lines)
    assert RW not in str(BadKeyError)


@pytest.mark.parametrize(
    ("raw", "why"),
    [("short", "at least 16"), ("k" * 257, "at most 256"), ("kéy-0123456789abcdef", "ASCII")],
)
def test_unusable_keys_are_refused(raw: str, why: str) -> None:
    with pytest.raises(BadKeyError, match=why):
        split_keys(raw, what="API_KEYS")


def test_match_finds_the_key_and_its_role() -> None:
    rw, ro = RING.match(RW), RING.match(RO)
    assert rw is not None and rw.role is Role.WRITE
    assert ro is not None and ro.role is Role.READ
    assert RING.match(RW[:-1]) is None and RING.match("") is None and RING.match(RW + " ") is None
    # Given both ways, a key is read-write.
    both = KeyRing.build([RW], [RW])
    assert len(both.keys) == 1 and both.keys[0].role is Role.WRITE


def test_a_key_never_shows_in_its_repr() -> None:
    key = ApiKey.of(RW, Role.WRITE)
    assert RW not in repr(key) and RW not in repr(RING)
    assert len(key.fingerprint) == 12 and key.fingerprint not in RW


def test_bearer_header() -> None:
    assert bearer(None) is None
    assert bearer(f"Bearer {RW}") == RW
    assert bearer(f"bearer   {RW} ") == RW
    assert bearer("Basic dXNlcjpwYXNz") == ""
    assert bearer("Bearer") == ""
    assert bearer(RW) == ""


def test_sessions_expire_and_cannot_be_forged() -> None:
    key = RING.match(RW)
    assert key is not None
    token = issue_session(key, now=NOW, nonce="n1")
    assert RW not in token
    assert verify_session(RING, token, now=NOW + 10) == key
    assert verify_session(RING, token, now=NOW + SESSION_SECONDS + 1) is None
    version, expiry, fp, nonce, mac = token.split(".")
    assert session_nonce(token) == nonce == "n1"
    longer = f"{version}.{int(expiry) + 86400}.{fp}.{nonce}.{mac}"
    assert verify_session(RING, longer, now=NOW) is None  # the MAC covers the expiry
    other = RING.match(RO)
    assert other is not None
    as_other = f"{version}.{expiry}.{other.fingerprint}.{nonce}.{mac}"
    assert verify_session(RING, as_other, now=NOW) is None
    renamed = f"{version}.{expiry}.{fp}.n2.{mac}"
    assert verify_session(RING, renamed, now=NOW) is None  # and the nonce
    assert verify_session(RING, token[:-1] + ("0" if token[-1] != "0" else "1"), now=NOW) is None
    for junk in ("", "v1", "v2.1.2.3", "v1.x.y.z", "v2.1.2.3.4", "a" * 500):
        assert verify_session(RING, junk, now=NOW) is None
    # Removing the key ends its sessions.
    assert verify_session(KeyRing.build([RO]), token, now=NOW) is None


def test_csrf_is_bound_to_the_session() -> None:
    key = RING.match(RW)
    assert key is not None
    s1, s2 = issue_session(key, now=NOW, nonce="n1"), issue_session(key, now=NOW + 1, nonce="n2")
    assert verify_csrf(key, s1, csrf_token(key, s1))
    assert not verify_csrf(key, s1, csrf_token(key, s2))
    assert not verify_csrf(key, s1, None) and not verify_csrf(key, s1, "")


def _auth(method: str, **kw: object) -> tuple[bool, int, str]:
    v = authorize(
        RING,
        method=method,
        authorization=kw.get("authorization"),  # type: ignore[arg-type]
        session=kw.get("session"),  # type: ignore[arg-type]
        csrf=kw.get("csrf"),  # type: ignore[arg-type]
        now=NOW,
    )
    return v.allowed, v.status, v.code


def test_authorize_matrix() -> None:
    assert _auth("GET") == (False, 401, "unauthorized")
    assert _auth("GET", authorization="Bearer nope-nope-nope-nope") == (False, 401, "unauthorized")
    assert _auth("GET", authorization="Token abc") == (False, 401, "unauthorized")
    assert _auth("GET", authorization=f"Bearer {RO}") == (True, 200, "")
    assert _auth("POST", authorization=f"Bearer {RO}") == (False, 403, "forbidden")
    assert _auth("DELETE", authorization=f"Bearer {RO}") == (False, 403, "forbidden")
    assert _auth("POST", authorization=f"Bearer {RW}") == (True, 200, "")
    rw = RING.match(RW)
    ro = RING.match(RO)
    assert rw is not None and ro is not None
    session = issue_session(rw, now=NOW, nonce="n3")
    assert _auth("GET", session=session) == (True, 200, "")
    assert _auth("POST", session=session) == (False, 403, "csrf_failed")
    assert _auth("POST", session=session, csrf=csrf_token(rw, session)) == (True, 200, "")
    ro_session = issue_session(ro, now=NOW, nonce="n4")
    assert _auth("POST", session=ro_session, csrf=csrf_token(ro, ro_session)) == (
        False,
        403,
        "forbidden",
    )
    # A bearer header wins over a cookie, and a wrong one is not rescued by it.
    assert _auth("GET", authorization="Bearer wrong-wrong-wrong-wrong", session=session)[1] == 401


def test_no_keys_means_open() -> None:
    v = authorize(KeyRing(), method="POST", authorization=None, session=None, csrf=None, now=NOW)
    assert v.allowed and v.via == "open"
    assert not KeyRing().enabled and RING.enabled


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("api.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost:8080", True),
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("evil.example:8080", False),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:8080", False),
        ("127.0.0.2:8080", False),
        ("localhost:80x", False),
        ("[::1]x", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_host(host: str | None, ok: bool) -> None:
    assert loopback_host(host) is ok


def test_same_origin() -> None:
    host = "127.0.0.1:8080"
    assert same_origin("http://127.0.0.1:8080", None, host)
    assert same_origin(None, "same-origin", host)
    assert same_origin(None, "none", host)
    assert not same_origin("https://evil.example", None, host)
    assert not same_origin("http://127.0.0.1:8080", "cross-site", host)
    assert not same_origin("null", None, host)
    assert not same_origin("http://127.0.0.1:8081", None, host)
    assert not same_origin("127.0.0.1:8080", None, host)
    # Neither header: not taken for our own page.
    assert not same_origin(None, None, host)
