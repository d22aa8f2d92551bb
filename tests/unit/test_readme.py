"""What the documentation states that code can check: the ACL recipes (docs/security.md) are the
code's (``threads-poller acl``) and stay narrow; every setting is in the Configuration table
(docs/configuration.md). The README keeps only the front page; the detail moved to docs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings
from worker.store.acl import ROLES, acl_setuser, role_rules

DOCS = Path(__file__).resolve().parents[2] / "docs"
SECURITY = (DOCS / "security.md").read_text(encoding="utf-8")
CONFIGURATION = (DOCS / "configuration.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("role", ROLES)
def test_the_readme_shows_what_the_code_prints(role: str) -> None:
    assert acl_setuser(f"threads-poller-{role}", [role], "threads-poller") in SECURITY


def test_no_role_gets_what_no_role_needs() -> None:
    for role in ROLES:
        rules = role_rules(role, "p")
        commands = {r[1:] for r in rules if r.startswith("+")}
        assert not {c for c in commands if c.startswith("@")}, role  # no whole categories
        forbidden = {"flushall", "flushdb", "keys", "scan", "config", "debug", "eval", "monitor"}
        assert not commands & forbidden, role
        keys = [r for r in rules if "~" in r]
        assert keys and all("p:" in k for k in keys), (role, keys)  # only this prefix's keys
    assert role_rules("producer", "p") == ["+ping", "+select", "+xadd", "%W~p:intake"]


def test_a_user_line_starts_from_nothing() -> None:
    line = acl_setuser("u", ["producer", "reader"], "p", "pw")
    assert line.startswith("ACL SETUSER u reset on >pw ")
    assert line.count("+xadd") == 1
    with pytest.raises(ValueError, match="unknown role"):
        acl_setuser("u", ["admin"], "p")


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [
        n.upper() for n in Settings.model_fields if f"| `{n.upper()}` |" not in CONFIGURATION
    ]
    assert not missing, missing
