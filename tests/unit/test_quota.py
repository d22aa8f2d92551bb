"""Publishing quota: the parser of the publishing_limit reply (pure). The Python API, the CLI and
the worker's cached copy: tests/integration/test_quota.py."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from api_client.errors import MalformedResponseError, ThreadsError
from api_client.parsing import parse_publishing_limit
from worker.cli.operator import quota_line

FULL = {
    "data": [
        {
            "quota_usage": 3,
            "config": {"quota_total": 250, "quota_duration": 86400},
            "reply_quota_usage": 10,
            "reply_config": {"quota_total": 1000, "quota_duration": 86400},
            "delete_quota_usage": 0,
            "delete_config": {"quota_total": 100, "quota_duration": 86400},
            "location_search_quota_usage": 7,
            "location_search_config": {"quota_total": 500, "quota_duration": 86400},
        }
    ]
}


def test_full_reply() -> None:
    q = parse_publishing_limit(200, json.dumps(FULL).encode())
    assert q.quota_usage == 3 and q.config is not None and q.config.quota_total == 250
    assert q.remaining("quota") == 247
    assert q.remaining("reply") == 990
    assert q.remaining("delete") == 100
    assert q.remaining("location_search") == 493


def test_missing_blocks_are_unknown_not_zero() -> None:
    q = parse_publishing_limit(200, b'{"data": [{"quota_usage": 4}]}')
    assert q.quota_usage == 4 and q.config is None and q.reply_quota_usage is None
    assert q.remaining("quota") is None and q.remaining("reply") is None


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"data": []}',
        b'{"data": [5]}',
        b'{"data": [{"quota_usage": "many"}]}',
        b'{"data": [{"config": {"quota_total": "x"}}]}',
        b"not json",
    ],
)
def test_malformed_quota_replies(body: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        parse_publishing_limit(200, body)


@hyp_settings(max_examples=300, deadline=None)
@given(
    http=st.integers(min_value=100, max_value=599),
    payload=st.recursive(
        st.none() | st.integers() | st.text(max_size=5) | st.booleans(),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["data", "quota_usage", "config", "quota_total", "error", "code"]),
                c,
                max_size=4,
            )
        ),
        max_leaves=12,
    ),
)
def test_quota_parser_never_crashes(http: int, payload: object) -> None:
    with contextlib.suppress(ThreadsError):
        parse_publishing_limit(http, json.dumps(payload).encode())


def test_quota_line_says_used_and_left() -> None:
    assert quota_line("posts", 2, 250, 86400) == f"{'posts':18} 2 used, 248 left of 250 per 24 h"
    assert quota_line("replies", 1001, 1000, 86400).endswith("1001 used, 0 left of 1000 per 24 h")
    assert quota_line("deletes", None, 100, 86400).endswith("unknown (the API did not say)")
    assert quota_line("posts", 3, None, None).endswith("3 used, limit unknown")
