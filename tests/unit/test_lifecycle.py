"""Settings that could strand data are refused at load time (pure). The fenced job lifecycle
on Redis: tests/integration/test_lifecycle.py.
"""

from __future__ import annotations

import pytest

from config import SettingsError
from tests.conftest import make_settings


def test_a_result_ttl_shorter_than_the_longest_poll_is_refused() -> None:
    with pytest.raises(SettingsError) as err:
        make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:9/v1.0", result_ttl_seconds=600)
    assert "RESULT_TTL_SECONDS (600)" in str(err.value)
    assert "THROTTLE_MAX_DELAY_SECONDS" in str(err.value)
    ok = make_settings("redis://127.0.0.1:1/0", "http://127.0.0.1:9/v1.0")
    assert ok.result_ttl_seconds >= ok.longest_poll_seconds()
