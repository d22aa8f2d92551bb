"""A request URL handed to aiohttp already encoded (api_client.client.request_url) is the URL
aiohttp would have built from the string and the query; anything that needs encoding is left to
aiohttp."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from api_client.client import STATUS_FIELDS, plain_base, request_url

BASE = "http://127.0.0.1:8080/v1.0"


def _plain(base: str) -> URL:
    built = plain_base(base)
    assert built is not None
    return built


BASE_URL = _plain(BASE)


def aiohttps(base: str, path: str, query: dict[str, str]) -> URL:
    """What aiohttp sends for ``session.request(method, base + path, params=query)``."""
    return URL(base + path).extend_query(query)


def test_a_status_call_is_sent_as_written() -> None:
    query = {"fields": STATUS_FIELDS, "access_token": "THAAabc123-_.~"}
    url = request_url(BASE_URL, "/17900000000001", query)
    assert url is not None
    assert str(url) == str(aiohttps(BASE, "/17900000000001", query))
    assert url == aiohttps(BASE, "/17900000000001", query)
    assert url.query["access_token"] == "THAAabc123-_.~"


def test_what_needs_encoding_is_left_to_aiohttp() -> None:
    for path, token in [
        ("/1", "a+b/c=d"),
        ("/1", "x y&z"),
        ("/1", "é"),
        ("/1 2", "t"),
        ("/a?b", "t"),
        ("/", "t"),
        ("", "t"),
        ("/..", "t"),
        ("/.", "t"),
        ("/a/../b", "t"),
        ("/1.5", "t"),
    ]:
        assert request_url(BASE_URL, path, {"access_token": token}) is None


@given(
    path=st.lists(
        st.one_of(st.text(min_size=1, max_size=12), st.sampled_from([".", "..", "a.b"])),
        min_size=1,
        max_size=3,
    ).map(lambda parts: "".join("/" + p for p in parts)),
    query=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)
def test_any_url_it_builds_is_the_one_aiohttp_builds(path: str, query: dict[str, str]) -> None:
    url = request_url(BASE_URL, path, query)
    if url is not None:
        expected = aiohttps(BASE, path, query)
        assert str(url) == str(expected)
        assert url.raw_path == expected.raw_path
        assert url.raw_query_string == expected.raw_query_string


@given(
    path=st.from_regex(r"(/[A-Za-z0-9_~-]{1,12}){1,3}", fullmatch=True),
    token=st.from_regex(r"[A-Za-z0-9._~-]{0,40}", fullmatch=True),
)
def test_ids_and_tokens_of_plain_characters_take_the_short_way(path: str, token: str) -> None:
    query = {"fields": STATUS_FIELDS, "access_token": token}
    url = request_url(BASE_URL, path, query)
    assert url is not None
    assert str(url) == str(aiohttps(BASE, path, query))


@pytest.mark.parametrize(
    "base",
    [
        "https://graph.threads.net/v1.0",
        "https://graph.threads.net",
        "http://localhost:80/v1.0",
        "http://127.0.0.1:9/a/b",
        "http://[::1]:8080/v1.0",
        "https://graph.threads.net:443/v1.0",
    ],
)
def test_other_base_urls_build_the_same_urls_or_none(base: str) -> None:
    built = plain_base(base)
    query = {"fields": STATUS_FIELDS, "access_token": "THAA123"}
    if built is not None:
        assert str(request_url(built, "/123", query)) == str(aiohttps(base, "/123", query))


@pytest.mark.parametrize(
    "base",
    ["http://u:p@h/v1.0", "http://h/v1.0?x=1", "http://h/v1.0#f", "http://h/a b", "http://h/./v"],
)
def test_base_urls_that_need_care_go_the_usual_way(base: str) -> None:
    assert plain_base(base) is None
