"""Webhook signatures, settings and what an attempt's answer means (pure). Delivery, retries and
dead letters against a real receiver: tests/integration/test_webhooks.py.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from config import Settings, SettingsError, load_settings
from worker.core.targets import WebhookPolicy
from worker.core.webhooks import DeliveryVerdict, WebhookOutcome, judge_delivery
from worker.jobs.webhook import (
    GuardedResolver,
    TargetRefusedError,
    delivery_refusal,
    sign,
    verify_signature,
)

SECRET = "whsec-test-0123456789"


def test_signature_rejects_replays() -> None:
    body = b'{"a":1}'
    old = int(time.time()) - 3600
    assert not verify_signature(SECRET, body, sign(SECRET, body, old))
    assert verify_signature(SECRET, body, sign(SECRET, body, old), now=old + 10)
    assert not verify_signature(SECRET, body, "garbage")
    assert not verify_signature(SECRET, body, "t=1,v1=")


def test_webhook_url_needs_a_secret() -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        load_settings(_env_file=None, webhook_url="https://example.invalid/hook")


def base(**overrides: object) -> Settings:
    return load_settings(_env_file=None, **overrides)


def test_the_default_retry_schedule_is_the_one_webhook_users_know() -> None:
    s = base()
    assert s.webhook_retry_delays() == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    assert s.webhook_attempts() == 7
    assert [s.webhook_retry_delay(a) for a in (1, 2, 6)] == [5.0, 300.0, 36000.0]
    # An outage of about 17.6 h is covered, well inside the 7-day result TTL.
    assert sum(s.webhook_retry_delays()) == 63305.0
    assert s.longest_poll_seconds() < s.result_ttl_seconds


def test_attempts_cut_or_stretch_the_schedule() -> None:
    assert base(webhook_max_attempts=3).webhook_retry_delays() == (5.0, 300.0)
    assert base(webhook_max_attempts=1).webhook_retry_delays() == ()
    stretched = base(webhook_retry_schedule="1s, 2m,0.5h", webhook_max_attempts=6)
    assert stretched.webhook_retry_delays() == (1.0, 120.0, 1800.0, 1800.0, 1800.0)
    assert base(webhook_retry_schedule="250ms,1.5").webhook_retry_delays() == (0.25, 1.5)


def test_the_old_doubling_setting_still_means_what_it_meant() -> None:
    old = base(webhook_backoff_seconds=2, webhook_max_attempts=5)
    assert old.webhook_retry_delays() == (2.0, 4.0, 8.0, 16.0)
    assert base(webhook_backoff_seconds=2).webhook_attempts() == 5


@pytest.mark.parametrize(
    ("overrides", "name", "why"),
    [
        ({"webhook_retry_schedule": "5s,soon"}, "WEBHOOK_RETRY_SCHEDULE", "not a delay"),
        ({"webhook_retry_schedule": ""}, "WEBHOOK_RETRY_SCHEDULE", "empty"),
        ({"webhook_retry_schedule": "0s"}, "WEBHOOK_RETRY_SCHEDULE", "> 0"),
        ({"webhook_retry_schedule": "25h"}, "WEBHOOK_RETRY_SCHEDULE", "at most 24h"),
        ({"webhook_retry_schedule": ",".join(["1s"] * 60)}, "WEBHOOK_RETRY_SCHEDULE", "at most 49"),
        (
            {"webhook_retry_schedule": "1s", "webhook_backoff_seconds": 1},
            "WEBHOOK_RETRY_SCHEDULE, WEBHOOK_BACKOFF_SECONDS",
            "not both",
        ),
        (
            {"webhook_retry_schedule": "24h", "webhook_max_attempts": 20},
            "RESULT_TTL_SECONDS, POLL_MAX_SECONDS, THROTTLE_MAX_DELAY_SECONDS",
            "shorter than the longest possible poll",
        ),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_variable(
    overrides: dict[str, object], name: str, why: str
) -> None:
    with pytest.raises(SettingsError) as info:
        base(**overrides)
    text = str(info.value)
    assert text.startswith((f"invalid setting {name}:", f"invalid settings {name}:")), text
    assert why in text, text
    assert "\n" not in text


class Answers(AbstractResolver):
    """A resolver answering from a table (no socket)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        return None


def test_the_delivery_resolver_refuses_what_the_policy_refuses() -> None:
    answers = {
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "mixed.example": ["93.184.216.34", "10.0.0.1"],
        "meta.example": ["169.254.169.254"],
        "scoped.example": ["fe80::1%1"],
        "odd.example": ["not-an-address"],
        "inside.example": ["127.0.0.1"],
    }
    guard = GuardedResolver(WebhookPolicy.parse("inside.example"), Answers(answers))

    async def resolve(host: str) -> list[ResolveResult] | str:
        try:
            return await guard.resolve(host, 443)
        except TargetRefusedError as exc:
            return str(exc)

    async def run() -> dict[str, list[ResolveResult] | str]:
        return {host: await resolve(host) for host in answers}

    got = asyncio.run(run())
    assert [r["host"] for r in got["public.example"]] == answers["public.example"]  # type: ignore[index]
    assert got["mixed.example"] == (
        "mixed.example resolves to a private address: 10.0.0.1 (set "
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES=true or list it in WEBHOOK_ALLOWED_HOSTS)"
    )
    assert "link-local address: 169.254.169.254" in str(got["meta.example"])
    assert "link-local" in str(got["scoped.example"])
    assert "resolved to 'not-an-address'" in str(got["odd.example"])
    assert isinstance(got["inside.example"], list)  # allowed by name, whatever it resolves to


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/h", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://2130706433/", "non-canonical"),
        ("https://...", "not a valid host name"),
        ("https://hooks.example.com/h", None),  # a name: the resolver decides
    ],
)
def test_a_stored_url_is_judged_again_before_delivery(url: str, why: str | None) -> None:
    refusal = delivery_refusal(url, WebhookPolicy(signing=True))
    assert (refusal is None) if why is None else (why in (refusal or "")), refusal


@pytest.mark.parametrize(
    ("status", "failure", "refused", "attempt", "expected"),
    [
        (200, "", False, 1, DeliveryVerdict(WebhookOutcome.DELIVERED, "")),
        (204, "", False, 6, DeliveryVerdict(WebhookOutcome.DELIVERED, "")),
        # 5xx and the "later" statuses are retried while attempts are left, then dead.
        (503, "", False, 1, DeliveryVerdict(WebhookOutcome.RETRY, "HTTP 503")),
        (429, "", False, 2, DeliveryVerdict(WebhookOutcome.RETRY, "HTTP 429")),
        (408, "", False, 3, DeliveryVerdict(WebhookOutcome.DEAD, "HTTP 408")),
        # Any other status is the receiver's final no: dead at once, not retryable.
        (404, "", False, 1, DeliveryVerdict(WebhookOutcome.DEAD, "HTTP 404", retryable=False)),
        (302, "", False, 1, DeliveryVerdict(WebhookOutcome.DEAD, "HTTP 302", retryable=False)),
        # No answer: retried; a refused target never is.
        (
            None,
            "no answer within 5s",
            False,
            1,
            DeliveryVerdict(WebhookOutcome.RETRY, "no answer within 5s"),
        ),
        (None, "", False, 3, DeliveryVerdict(WebhookOutcome.DEAD, "failed")),
        (
            None,
            "webhook url refused: 10.0.0.1",
            True,
            1,
            DeliveryVerdict(WebhookOutcome.DEAD, "webhook url refused: 10.0.0.1", retryable=False),
        ),
    ],
)
def test_judge_delivery(
    status: int | None, failure: str, refused: bool, attempt: int, expected: DeliveryVerdict
) -> None:
    got = judge_delivery(status, attempt=attempt, max_attempts=3, failure=failure, refused=refused)
    assert got == expected
