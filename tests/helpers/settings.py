"""The service's settings for a test: fast polls, no pacing, no fixed port, and a token that
the leak checks look for (tests/leaks.py)."""

from __future__ import annotations

from typing import Any

from config import Settings, load_settings

TEST_TOKEN = "EAAtestTOKENsecret0123456789abcdef"


def make_settings(redis_url: str, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "redis_url": redis_url,
        "threads_api_base_url": base_url,
        "threads_access_token": TEST_TOKEN,
        "poll_interval_seconds": 0.2,
        "poll_max_seconds": 1.0,
        "http_timeout_seconds": 1.0,
        "job_timeout_seconds": 5.0,
        "intake_claim_idle_seconds": 1.0,
        # Pacing is tested on its own (test_api_policy.py); elsewhere it would only add delay.
        "account_max_requests_per_second": 0,
        "throttle_backoff_seconds": 0.2,
        # No /metrics server unless a test asks for one (tests/integration/test_metrics.py): no
        # fixed port.
        "metrics_port": 0,
        "log_format": "json",
    }
    values.update(overrides)
    return load_settings(**values)
