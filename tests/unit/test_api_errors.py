"""Explanations of API errors for ``last_error``: pure functions, no Redis, no HTTP."""

from __future__ import annotations

import json
import pickle

import pytest

from api_client import explain_api_error
from api_client.errors import GraphAPIError, NetworkError, ThreadsError
from api_client.parsing import parse_container_status
from api_client.policy import ErrorKind, classify

MEDIA_ID_PREFIX = "this id looks like a published media id, not a media container id: "


def graph_error(message: str, code: int | None = 100, subcode: int | None = None) -> GraphAPIError:
    return GraphAPIError(message, code=code, subcode=subcode, error_type="THApiException")


def status_reply(body: dict[str, object], http_status: int = 400) -> GraphAPIError:
    with pytest.raises(GraphAPIError) as info:
        parse_container_status("18030000000000001", http_status, json.dumps(body).encode())
    return info.value


def test_status_of_a_published_media_id_is_explained() -> None:
    # The wire form reported for GET /{published-media-id}?fields=status,error_message.
    err = status_reply(
        {
            "error": {
                "message": "Tried accessing nonexisting field (status)",
                "type": "THApiException",
                "code": 100,
                "fbtrace_id": "AbC123xyz",
            }
        }
    )
    assert err.nonexisting_field == "status"
    text = explain_api_error(err)
    assert text is not None and text.startswith(MEDIA_ID_PREFIX)
    assert "'status'" in text and "POST /{user-id}/threads" in text
    assert (explain_api_error(err, container_id="18030000000000001") or "").startswith(
        "id 18030000000000001 looks like a published media id, not a media container id: "
    )
    # Still a request that cannot succeed: FAILED, not retried.
    assert classify(err) is ErrorKind.INVALID_REQUEST and classify(err).is_fatal


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("(#100) Tried accessing nonexisting field (status)", "status"),
        (
            "Tried accessing nonexisting field (error_message) on node type (ThreadsMedia)",
            "error_message",
        ),
        ("tried accessing NONEXISTING field ( status )", "status"),
    ],
)
def test_message_variants(message: str, field: str) -> None:
    err = graph_error(message)
    assert err.nonexisting_field == field
    assert (explain_api_error(err) or "").startswith(MEDIA_ID_PREFIX)
    # Survives pickling (arq results carry exceptions); our own bytes, not untrusted input.
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301
    assert explain_api_error(copy) == explain_api_error(err)


@pytest.mark.parametrize(
    "err",
    [
        # Another field: not the status we ask for, so not the media-id mix-up.
        graph_error("Tried accessing nonexisting field (gif_attachment)"),
        # Same words under another code: only code 100 means a missing field.
        graph_error("Tried accessing nonexisting field (status)", code=1),
        graph_error("Tried accessing nonexisting field (status)", code=None),
        # Code 100 for other reasons.
        graph_error("Unsupported get request. Object with ID '1' does not exist", subcode=33),
        graph_error("(#100) The parameter creation_id is required"),
        NetworkError("GET /1: connection reset"),
        ThreadsError("Tried accessing nonexisting field (status)"),
    ],
)
def test_other_errors_have_no_explanation(err: ThreadsError) -> None:
    assert explain_api_error(err) is None
