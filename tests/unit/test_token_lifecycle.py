"""Token lifecycle, pure parts: the tokens file's format, when a token is refreshed, the expiry
a refresh answer gives, the back-off; and the write-back to a tokens file (a temporary dir)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from worker.core.tokens import (
    MIN_REFRESH_AGE_SECONDS,
    RefreshVerdict,
    TokenEntry,
    TokenFacts,
    expiry_from_refresh,
    parse_time,
    parse_token_entries,
    refresh_verdict,
)
from worker.jobs.token_refresh import Refreshed, refresh_base
from worker.jobs.tokens import AccountTokenSource, WriteBackError, fingerprint

DAY = 86400.0
NOW = 1_800_000_000.0
SECRET = "EAAsecretTOKENvalue0123456789"


def test_the_file_takes_strings_and_objects_with_times() -> None:
    raw = json.dumps(
        {
            "111": "plain-token",
            "222": {"token": "obj-token", "expires_at": 1_800_000_000, "issued_at": 1_790_000_000},
            "333": {"token": "iso-token", "expires_at": "2027-01-15T10:00:00Z"},
            "444": {"token": "naive", "expires_at": "2027-01-15T10:00:00"},
        }
    ).encode()
    got = parse_token_entries(raw)
    assert got["111"] == TokenEntry("plain-token")
    assert got["222"] == TokenEntry("obj-token", 1_800_000_000.0, 1_790_000_000.0)
    assert got["333"].expires_at == 1_800_000_000.0 + (
        parse_time("2027-01-15T10:00:00+00:00") - 1_800_000_000.0
    )
    # A time without a zone is UTC.
    assert got["444"].expires_at == got["333"].expires_at
    assert got["333"].issued_at is None
    assert "iso-token" not in repr(got["333"])


@pytest.mark.parametrize(
    "value",
    [
        {"111": {"expires_at": 1}},
        {"111": {"token": SECRET, "expires_at": "next tuesday"}},
        {"111": {"token": SECRET, "expires_at": True}},
        {"111": {"token": SECRET, "expires_at": -5}},
        {"111": {"token": SECRET, "colour": "red"}},
        {"111": ""},
        {"111": 5},
        ["111", SECRET],
    ],
)
def test_a_bad_entry_is_refused_without_quoting_the_token(value: object) -> None:
    with pytest.raises(ValueError) as err:
        parse_token_entries(json.dumps(value).encode())
    assert SECRET not in str(err.value)


def test_parse_time_forms() -> None:
    assert parse_time(1_800_000_000) == 1_800_000_000.0
    assert parse_time("2027-01-15T10:00:00+02:00") == parse_time("2027-01-15T08:00:00Z")
    with pytest.raises(ValueError):
        parse_time(float("nan"))


def facts(**kw: float | bool | None) -> TokenFacts:
    values: dict[str, object] = {"expires_at": NOW + 5 * DAY, "issued_at": NOW - 55 * DAY}
    values.update(kw)
    return TokenFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "verdict"),
    [
        ({}, RefreshVerdict.DUE),
        ({"expires_at": NOW + 10 * DAY - 1}, RefreshVerdict.DUE),
        ({"expires_at": NOW + 10 * DAY + 1}, RefreshVerdict.NOT_YET),
        # Meta refuses a refresh of a token younger than 24 h.
        ({"issued_at": NOW - MIN_REFRESH_AGE_SECONDS + 1}, RefreshVerdict.TOO_YOUNG),
        ({"issued_at": NOW - MIN_REFRESH_AGE_SECONDS}, RefreshVerdict.DUE),
        ({"issued_at": None}, RefreshVerdict.TOO_YOUNG),
        # Past expiry only a new sign-in helps: no refresh call.
        ({"expires_at": NOW}, RefreshVerdict.EXPIRED),
        ({"rejected": True}, RefreshVerdict.REJECTED),
        ({"retry_at": NOW + 1}, RefreshVerdict.BACKING_OFF),
        ({"retry_at": NOW}, RefreshVerdict.DUE),
        # Unknown expiry, at least 24 h old: a refresh learns it.
        ({"expires_at": None}, RefreshVerdict.DUE),
    ],
)
def test_refresh_verdict(kw: dict[str, float | bool | None], verdict: RefreshVerdict) -> None:
    assert refresh_verdict(facts(**kw), now=NOW, margin=10 * DAY) is verdict


def test_expiry_counts_from_redis_time() -> None:
    assert expiry_from_refresh(NOW, 5_183_944) == NOW + 5_183_944
    for bad in (0, -1, "5183944", None, True, float("inf"), 10**9):
        with pytest.raises(ValueError):
            expiry_from_refresh(NOW, bad)


def test_refresh_base_drops_the_version() -> None:
    assert refresh_base("https://graph.threads.net/v1.0") == "https://graph.threads.net"
    assert refresh_base("http://127.0.0.1:9/v1.0/") == "http://127.0.0.1:9"
    assert refresh_base("http://proxy/threads/v21.0") == "http://proxy/threads"
    assert "tok" not in repr(Refreshed("tok-secret", 5))


def _file(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


async def test_write_back_is_atomic_0600_and_keeps_the_other_entries(tmp_path: Path) -> None:
    f = _file(tmp_path / "tokens.json", {"111": "old-111", "222": {"token": "t222"}})
    src = AccountTokenSource(None, f, environ={}, recheck_seconds=0)
    src.write_refreshed("111", "old-111", TokenEntry("new-111", NOW + 60 * DAY, NOW))
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    data = json.loads(f.read_text())
    assert data["111"] == {"token": "new-111", "expires_at": NOW + 60 * DAY, "issued_at": NOW}
    assert data["222"] == {"token": "t222"}
    assert await src.token_for("111") == "new-111"
    assert sorted(os.listdir(tmp_path)) == ["tokens.json"]  # no temporary file left
    # The file changed meanwhile (an operator put a new token): theirs wins.
    with pytest.raises(WriteBackError) as err:
        src.write_refreshed("111", "old-111", TokenEntry("newer", None, None))
    assert "old-111" not in str(err.value) and "newer" not in str(err.value)
    assert json.loads(f.read_text())["111"]["token"] == "new-111"


async def test_separate_refreshed_file_applies_while_the_tokens_file_is_unchanged(
    tmp_path: Path,
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    f = _file(ro / "tokens.json", {"111": "orig-111", "222": "orig-222"})
    out = tmp_path / "refreshed.json"
    src = AccountTokenSource(None, f, environ={}, recheck_seconds=0, refreshed_file=out)
    assert src.writes_to == out
    ro.chmod(0o500)  # a read-only mount
    try:
        src.write_refreshed("111", "orig-111", TokenEntry("ref-111", NOW + 60 * DAY, NOW))
    finally:
        ro.chmod(0o700)
    assert json.loads(out.read_text())["111"]["base"] == fingerprint("orig-111")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert await src.token_for("111") == "ref-111"
    assert await src.token_for("222") == "orig-222"
    assert src.entry_for("111") == TokenEntry(
        "ref-111", NOW + 60 * DAY, NOW, fingerprint("orig-111")
    )
    # A new token put in the tokens file by hand wins over the older refresh.
    _file(f, {"111": "hand-111", "222": "orig-222"})
    assert await src.token_for("111") == "hand-111"
    assert {"ref-111", "hand-111", "orig-222"} <= set(src.known_secrets())


def test_a_bad_file_is_logged_without_its_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = _file(tmp_path / "tokens.json", {"111": {"token": SECRET, "expires_at": "soon"}})
    with caplog.at_level(logging.DEBUG):
        AccountTokenSource(None, f, environ={}, recheck_seconds=0)
    assert "tokens file ignored: account 111" in caplog.text
    assert SECRET not in caplog.text
