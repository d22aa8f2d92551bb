"""The response parser and the error policy: typed values or typed errors, never a crash."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api_client.errors import GraphAPIError, MalformedResponseError, ThreadsError
from api_client.parsing import parse_container_status
from api_client.policy import ErrorKind, classify
from api_client.redact import REDACTED, redact


def test_documented_bodies() -> None:
    ok = parse_container_status("1788", 200, b'{"status": "FINISHED", "id": "1788"}')
    assert (ok.status, ok.error_message) == ("FINISHED", None)
    err = parse_container_status(
        "1788",
        200,
        b'{"status": "ERROR", "id": "1788", "error_message": "FAILED_DOWNLOADING_VIDEO"}',
    )
    assert (err.status, err.error_message) == ("ERROR", "FAILED_DOWNLOADING_VIDEO")


def test_unknown_values_are_kept_verbatim() -> None:
    got = parse_container_status("1", 200, b'{"status": "NEW_THING", "error_message": "ODD"}')
    assert (got.status, got.error_message) == ("NEW_THING", "ODD")


def test_error_envelope_is_not_read_as_a_status() -> None:
    body = {
        "error": {
            "message": "Unsupported get request.",
            "type": "THApiException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": "AbCdEf123",
            "is_transient": False,
        }
    }
    with pytest.raises(GraphAPIError) as info:
        parse_container_status("1", 400, json.dumps(body).encode())
    e = info.value
    assert (e.code, e.subcode, e.error_type, e.fbtrace_id, e.http_status) == (
        100,
        33,
        "THApiException",
        "AbCdEf123",
        400,
    )
    assert "AbCdEf123" in str(e) and "100/33" in str(e)
    assert classify(e) is ErrorKind.NOT_FOUND


def test_error_envelope_wins_even_with_http_200() -> None:
    with pytest.raises(GraphAPIError):
        parse_container_status("1", 200, b'{"error": {"code": 4, "message": "limit"}}')


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"<html>oops</html>"),
        (200, b""),
        (200, b"[1,2]"),
        (200, b'{"status": 5}'),
        (200, b"{}"),
        (502, b"<html>Bad gateway</html>"),
        (500, b'{"x": 1}'),
        (200, b'{"status": "ERROR", "error_message": 7}'),
    ],
)
def test_malformed_bodies_are_typed_errors(status: int, body: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        parse_container_status("1", status, body)


@pytest.mark.parametrize(
    ("code", "subcode", "transient", "http", "kind"),
    [
        (1, None, False, 500, ErrorKind.TRANSIENT),
        (2, None, True, 503, ErrorKind.TRANSIENT),
        (None, None, True, 400, ErrorKind.TRANSIENT),
        (4, None, True, 400, ErrorKind.THROTTLED),
        (17, None, False, 400, ErrorKind.THROTTLED),
        (32, None, False, 400, ErrorKind.THROTTLED),
        (341, None, False, 400, ErrorKind.THROTTLED),
        (613, None, False, 400, ErrorKind.THROTTLED),
        (999, None, False, 429, ErrorKind.THROTTLED),
        (190, 463, False, 400, ErrorKind.TOKEN),
        (190, None, False, 500, ErrorKind.TOKEN),
        (102, None, False, 400, ErrorKind.TOKEN),
        (10, None, False, 403, ErrorKind.PERMISSION),
        (250, None, False, 400, ErrorKind.PERMISSION),
        (100, 33, False, 400, ErrorKind.NOT_FOUND),
        (100, None, False, 400, ErrorKind.INVALID_REQUEST),
        (12345, None, False, 400, ErrorKind.UNKNOWN),
        (12345, None, False, 502, ErrorKind.TRANSIENT),
    ],
)
def test_policy_table(
    code: int | None, subcode: int | None, transient: bool, http: int, kind: ErrorKind
) -> None:
    err = GraphAPIError("m", code=code, subcode=subcode, is_transient=transient, http_status=http)
    assert classify(err) is kind


def test_redact_removes_tokens_in_every_shape() -> None:
    token = "EAAsecretTOKEN123"
    text = (
        f"GET https://graph.threads.net/v1.0/1?fields=status&access_token={token}&x=1 "
        f"Authorization: Bearer {token} {{'access_token': '{token}'}} raw {token}"
    )
    out = redact(text, [token])
    assert token not in out and "secretTOKEN" not in out
    assert out.count(REDACTED) >= 4
    # Unknown tokens in URL form are caught by shape.
    assert "zzz" not in redact("url?access_token=zzz&a=b")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "status",
                    "error_message",
                    "error",
                    "code",
                    "id",
                    "message",
                    "type",
                    "error_subcode",
                    "is_transient",
                    "fbtrace_id",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(http=st.integers(min_value=100, max_value=599), body=st.binary(max_size=200))
def test_parser_never_crashes_on_bytes(http: int, body: bytes) -> None:
    with contextlib.suppress(ThreadsError):
        parse_container_status("1", http, body)


@settings(max_examples=400, deadline=None)
@given(http=st.integers(min_value=100, max_value=599), payload=json_values)
def test_parser_never_crashes_on_json(http: int, payload: object) -> None:
    try:
        got = parse_container_status("1", http, json.dumps(payload).encode())
    except ThreadsError as exc:
        classify(exc)  # every error can be classified
    else:
        assert isinstance(got.status, str) and got.status
        assert http < 400
