"""Issue 21's settings and recipes: the API keys files judged like every secrets file, a
KEY_PREFIX and an ACL line nobody can widen, /metrics on loopback and on two ports, and what
a dead letter keeps of a secret-named field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import SettingsError, load_settings
from worker.runtime.intake import _show
from worker.store.acl import acl_setuser

KEY = "rw-test-key-0123456789abcdef"


def keys_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "keys"
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("name", ["api_keys_file", "api_read_keys_file"])
def test_api_keys_files_others_can_read_are_refused(tmp_path: Path, name: str) -> None:
    path = keys_file(tmp_path, 0o644)
    with pytest.raises(SettingsError, match=f"invalid setting {name.upper()}: .*chmod 600"):
        load_settings(_env_file=None, **{name: str(path)})
    assert load_settings(_env_file=None, secret_file_mode_check="warn", **{name: str(path)})
    path.chmod(0o600)
    assert getattr(load_settings(_env_file=None, **{name: str(path)}), name) == path


@pytest.mark.parametrize(
    "prefix", ["tp:eu", "tp*", "tp?", "tp[a]", "tp eu", "tp\teu", "tp~x", "tp%R", "", "x" * 65]
)
def test_key_prefix_cannot_reach_other_keys(prefix: str) -> None:
    with pytest.raises(SettingsError, match="invalid setting KEY_PREFIX"):
        load_settings(_env_file=None, key_prefix=prefix)


def test_key_prefix_allows_plain_names() -> None:
    for prefix in ("tp", "tp-eu", "tp_eu.2", "threads-poller"):
        assert load_settings(_env_file=None, key_prefix=prefix).key_prefix == prefix


@pytest.mark.parametrize(
    ("user", "prefix"),
    [
        ("x on +@all ~* &*", "tp"),  # once: a producer with FLUSHALL
        ("producer", "tp ~* +flushall"),
        ("producer", "tp:*"),
        ("pro ducer", "tp"),
        ("producer", "*"),
        (">pw", "tp"),
        ("producer\n", "tp"),  # a line break ends the line: "$" alone let it by
    ],
)
def test_acl_lines_take_no_injected_rule(user: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        acl_setuser(user, ["producer"], prefix)


def test_acl_cli_refuses_an_injection_with_exit_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "acl", "producer", "--user", "p +flushall ~*"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out
    assert "invalid user name" in out.stderr and "ACL SETUSER" not in out.stdout


def test_metrics_on_loopback_and_serve_on_its_own_port() -> None:
    s = load_settings(_env_file=None)
    assert s.metrics_host == "127.0.0.1"
    assert (s.metrics_port, s.serve_metrics()) == (9100, 9101)
    assert load_settings(_env_file=None, metrics_port=0).serve_metrics() == 0
    assert load_settings(_env_file=None, serve_metrics_port=9200).serve_metrics() == 9200


def test_secret_named_fields_are_redacted_whatever_their_value() -> None:
    shown = _show(
        {
            b"container_id": b"1",
            b"access_token": b"anything at all",
            b"X-Api-Key": b"k",
            b"PASSWORD": b"hunter2",
            b"session": b"s",
            b"note": b"kept",
        }
    )
    assert shown == {
        "container_id": "1",
        "access_token": "[redacted]",
        "X-Api-Key": "[redacted]",
        "PASSWORD": "[redacted]",
        "session": "[redacted]",
        "note": "kept",
    }
