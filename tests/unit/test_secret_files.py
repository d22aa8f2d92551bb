"""Issue 15, item 3: secrets at rest. ``*_FILE`` settings (the Docker / Kubernetes secrets
convention), the permission rule for every secrets file, the tokens file's reload, and that no
``repr`` or error text carries a secret."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import SettingsError, load_settings
from config.secrets import FileModeCheck, mode_problem
from config.settings import redacted_url
from worker.jobs.tokens import AccountTokenSource, parse_tokens

TOKEN = "EAAfileTOKENsecret0123456789"
WEBHOOK = "whsec-from-a-file-0123456789"
REDIS_PW = "redis-pw-from-a-file-98765"


def secret_file(tmp_path: Path, name: str, content: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "owner_is_me", "problem"),
    [
        (0o600, True, None),
        (0o400, True, None),
        (0o640, False, None),  # root:fsGroup 0440/0640, a mounted Kubernetes secret
        (0o440, False, None),
        (0o640, True, "readable by its group although this user owns it"),
        (0o620, False, "writable by its group"),
        (0o644, True, "readable or writable by others"),
        (0o444, False, "readable or writable by others"),  # Docker swarm's default
        (0o602, True, "readable or writable by others"),
    ],
)
def test_the_permission_rule(mode: int, owner_is_me: bool, problem: str | None) -> None:
    found = mode_problem(stat.S_IFREG | mode, 1000 if owner_is_me else 0, 1000)
    assert (found is None) if problem is None else (problem in (found or "")), found


def test_secrets_come_from_files_without_their_newline(tmp_path: Path) -> None:
    s = load_settings(
        _env_file=None,
        threads_access_token_file=secret_file(tmp_path, "token", TOKEN + "\n"),
        webhook_secret_file=secret_file(tmp_path, "whsec", WEBHOOK + "\r\n"),
        redis_url="redis://worker@127.0.0.1:6379/0",
        redis_password_file=secret_file(tmp_path, "redis", REDIS_PW),
    )
    assert s.token() == TOKEN
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == WEBHOOK
    assert s.redis_password() == REDIS_PW
    assert set(s.secrets()) == {TOKEN, WEBHOOK, REDIS_PW}
    for text in (repr(s), str(s), str(s.model_dump())):
        assert TOKEN not in text and WEBHOOK not in text and REDIS_PW not in text
    assert s.warnings() == []


@pytest.mark.parametrize(
    "name", ["threads_access_token_file", "webhook_secret_file", "redis_password_file"]
)
def test_a_secrets_file_others_can_read_is_refused_or_warned_about(
    tmp_path: Path, name: str
) -> None:
    path = secret_file(tmp_path, "s", "value-0123456789", 0o644)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, **{name: path})
    text = str(info.value)
    assert text.startswith(f"invalid setting {name.upper()}:") and "\n" not in text
    assert "readable or writable by others (mode 0644)" in text and "chmod 600" in text
    assert "value-0123456789" not in text
    s = load_settings(_env_file=None, secret_file_mode_check="warn", **{name: path})
    assert s.secrets() == ["value-0123456789"]
    assert len(s.warnings()) == 1 and "mode 0644" in s.warnings()[0]


def test_the_tokens_file_is_judged_at_start_too(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "tokens.json", json.dumps({"1": TOKEN}), 0o644)
    with pytest.raises(SettingsError, match="invalid setting THREADS_TOKENS_FILE"):
        load_settings(_env_file=None, threads_tokens_file=path)
    # Not there yet is fine: the worker reads it once it appears.
    assert load_settings(_env_file=None, threads_tokens_file=tmp_path / "later.json")


@pytest.mark.parametrize(
    ("overrides", "name", "why"),
    [
        (
            {"webhook_secret": "x" * 20, "webhook_secret_file": "F"},
            "WEBHOOK_SECRET, WEBHOOK_SECRET_FILE",
            "set WEBHOOK_SECRET or WEBHOOK_SECRET_FILE",
        ),
        (
            {"threads_access_token": "x" * 20, "threads_access_token_file": "F"},
            "THREADS_ACCESS_TOKEN, THREADS_ACCESS_TOKEN_FILE",
            "or THREADS_ACCESS_TOKEN_FILE",
        ),
        ({"redis_url": "redis://:pw@h:1/0", "redis_password_file": "F"}, "", "REDIS_URL has"),
        ({"webhook_secret_file": "EMPTY"}, "WEBHOOK_SECRET_FILE", "is empty"),
        ({"webhook_secret_file": "MISSING"}, "WEBHOOK_SECRET_FILE", "cannot be read"),
        ({"webhook_secret_file": "BINARY"}, "WEBHOOK_SECRET_FILE", "not UTF-8"),
        (
            {"webhook_secret_file": "DEVICE", "secret_file_mode_check": "warn"},
            "WEBHOOK_SECRET_FILE",
            "not a regular file",  # /dev/zero would never end
        ),
    ],
)
def test_bad_secret_files_are_one_line(
    tmp_path: Path, overrides: dict[str, str], name: str, why: str
) -> None:
    files = {
        "F": secret_file(tmp_path, "f", "file-secret-0123456789"),
        "EMPTY": secret_file(tmp_path, "empty", "\n"),
        "MISSING": tmp_path / "missing",
        "BINARY": tmp_path / "binary",
        "DEVICE": Path("/dev/zero"),
    }
    files["BINARY"].write_bytes(b"\xff\xfe\x00")
    files["BINARY"].chmod(0o600)
    values = {k: files.get(v, v) for k, v in overrides.items()}
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, **values)
    text = str(info.value)
    assert why in text and "\n" not in text and "file-secret" not in text
    if name:
        assert text.startswith((f"invalid setting {name}", f"invalid settings {name}"))


def bump_mtime(path: Path) -> None:
    t = time.time() + 10
    os.utime(path, (t, t))


async def test_a_tokens_file_that_becomes_readable_by_others_is_not_reloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = secret_file(tmp_path, "tokens.json", json.dumps({"111": "old-token-0123456789"}))
    src = AccountTokenSource(None, path, environ={}, recheck_seconds=0)
    assert await src.token_for("111") == "old-token-0123456789"
    path.write_text(json.dumps({"111": "new-token-0123456789"}))
    path.chmod(0o644)
    bump_mtime(path)
    with caplog.at_level(logging.ERROR, logger="threads_poller.tokens"):
        assert await src.token_for("111") == "old-token-0123456789"
    assert "tokens file ignored: readable or writable by others (mode 0644)" in caplog.text
    assert "new-token" not in caplog.text and "old-token" not in caplog.text
    path.chmod(0o600)
    bump_mtime(path)
    assert await src.token_for("111") == "new-token-0123456789"
    warn = AccountTokenSource(
        None, path, environ={}, recheck_seconds=0, mode_check=FileModeCheck.WARN
    )
    path.chmod(0o644)
    assert await warn.token_for("111") == "new-token-0123456789"


@given(st.binary(max_size=300))
def test_parse_tokens_on_any_bytes(raw: bytes) -> None:
    try:
        tokens = parse_tokens(raw)
    except ValueError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in tokens.items())


def test_parse_tokens_refuses_deep_nesting_and_size() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_tokens(b"[" * 100_000)
    with pytest.raises(ValueError, match="larger than"):
        parse_tokens(b" " * (32 * 1024 * 1024 + 1))


@pytest.mark.parametrize(
    "url",
    [
        "redis://worker:hunter2-pw@127.0.0.1:6379/0",
        "rediss://:hunter2-pw@redis.internal:6380/1?ssl_ca_certs=/ca.pem",
        "redis://u:hunter2-pw@[::1]:6379/0",
        "redis://u:hunter2-pw@host/0",
        "unix://u:hunter2-pw@/run/redis.sock?db=0",
    ],
)
def test_the_redis_password_is_masked_in_repr_and_messages(url: str) -> None:
    shown = redacted_url(url)
    assert "hunter2-pw" not in shown and "***" in shown
    s = load_settings(_env_file=None, redis_url=url)
    assert "hunter2-pw" not in repr(s) and s.redis_password() == "hunter2-pw"
    assert "hunter2-pw" in s.secrets()


@given(
    user=st.text(alphabet="abcdefgh", max_size=8),
    password=st.text(alphabet="ABCDEFGHIJKLMNOP0123456789-_.~", min_size=12, max_size=30),
    host=st.sampled_from(["127.0.0.1", "redis", "[::1]", "r.example.com"]),
)
def test_redacted_url_never_shows_the_password(user: str, password: str, host: str) -> None:
    shown = redacted_url(f"redis://{user}:{password}@{host}:6379/0")
    assert password not in shown
