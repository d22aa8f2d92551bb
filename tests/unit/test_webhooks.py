"""Webhook signatures and settings (pure). Delivery, retries and dead letters against a real
receiver: tests/integration/test_webhooks.py.
"""

from __future__ import annotations

import time

import pytest

from worker.jobs.webhook import sign, verify_signature

SECRET = "whsec-test-0123456789"


def test_signature_rejects_replays() -> None:
    body = b'{"a":1}'
    old = int(time.time()) - 3600
    assert not verify_signature(SECRET, body, sign(SECRET, body, old))
    assert verify_signature(SECRET, body, sign(SECRET, body, old), now=old + 10)
    assert not verify_signature(SECRET, body, "garbage")
    assert not verify_signature(SECRET, body, "t=1,v1=")


def test_webhook_url_needs_a_secret() -> None:
    from config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        load_settings(_env_file=None, webhook_url="https://example.invalid/hook")
