"""Settings that could strand data are refused at load time (pure). The fenced job lifecycle
on Redis: tests/integration/test_lifecycle.py.
"""

from __future__ import annotations

import pytest

from config import SettingsError
from tests.helpers.settings import make_settings


def test_a_result_ttl_shorter_than_the_longest_poll_is_refused() -> None:
    with pytest.raises(SettingsError) as err:
        make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:9/v1.0", result_ttl_seconds=600)
    assert "RESULT_TTL_SECONDS (600)" in str(err.value)
    assert "THROTTLE_MAX_DELAY_SECONDS" in str(err.value)
    ok = make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:9/v1.0")
    assert ok.result_ttl_seconds >= ok.longest_poll_seconds()


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"result_ttl_seconds": 600}, "RESULT_TTL_SECONDS, POLL_MAX_SECONDS"),
        (
            {"job_timeout_seconds": 3, "http_timeout_seconds": 2},
            "JOB_TIMEOUT_SECONDS, HTTP_TIMEOUT",
        ),
        ({"webhook_url": "https://hooks.example.com/x"}, "WEBHOOK_URL, WEBHOOK_SECRET"),
    ],
)
def test_rules_across_settings_name_their_variables(
    overrides: dict[str, object], names: str
) -> None:
    with pytest.raises(SettingsError) as err:
        make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:9/v1.0", **overrides)
    text = str(err.value)
    assert text.startswith(f"invalid settings {names}"), text
    assert "SETTINGS:" not in text and "Value error" not in text
