"""Where tokens come from, and that they stay secret in settings and errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import SecretStr

from api_client.errors import GraphAPIError
from api_client.redact import redact
from config import load_settings
from worker.jobs.tokens import AccountTokenSource, fingerprint


def bump_mtime(path: Path) -> None:
    t = time.time() + 10
    os.utime(path, (t, t))


async def test_lookup_order_file_env_default(tmp_path: Path) -> None:
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"111": "file-token-111"}))
    f.chmod(0o600)  # a secrets file others may read is refused
    src = AccountTokenSource(
        SecretStr("default-token"),
        f,
        environ={"THREADS_ACCESS_TOKEN_111": "env-111", "THREADS_ACCESS_TOKEN_222": "env-222"},
        recheck_seconds=0,
    )
    assert await src.token_for("111") == "file-token-111"
    assert await src.token_for("222") == "env-222"
    assert await src.token_for("333") == "default-token"
    assert await src.token_for(None) == "default-token"
    assert set(src.known_secrets()) >= {"file-token-111", "env-222", "default-token"}


async def test_file_is_reloaded_and_bad_content_keeps_previous(tmp_path: Path) -> None:
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"111": "old"}))
    f.chmod(0o600)
    src = AccountTokenSource(None, f, environ={}, recheck_seconds=0)
    assert await src.token_for("111") == "old"
    f.write_text(json.dumps({"111": "new"}))
    bump_mtime(f)
    assert await src.token_for("111") == "new"
    f.write_text('{"111": "half-written')  # a torn write by the pipeline
    bump_mtime(f)
    assert await src.token_for("111") == "new"
    f.unlink()
    assert await src.token_for("111") == "new"


def test_settings_repr_masks_tokens() -> None:
    s = load_settings(_env_file=None, threads_access_token="EAAverySecretToken1234567")
    assert "EAAverySecretToken1234567" not in repr(s)
    assert "EAAverySecretToken1234567" not in str(s.model_dump())


def test_fingerprint_is_not_the_token() -> None:
    fp = fingerprint("EAAverySecretToken1234567")
    assert len(fp) == 12 and fp not in "EAAverySecretToken1234567"
    assert fp == fingerprint("EAAverySecretToken1234567") != fingerprint("other")


def test_error_text_from_the_server_is_scrubbed() -> None:
    from api_client.client import ThreadsClient

    err = GraphAPIError("Invalid OAuth access token - Cannot parse EAAsecret999", code=190)
    ThreadsClient.scrub(err, "EAAsecret999")
    assert "EAAsecret999" not in str(err) and "EAAsecret999" not in repr(err.args)
    assert "EAAsecret999" not in redact("x?access_token=EAAsecret999")
