"""Issue 25: what differs between Threads and Instagram lives in one typed description each
(api_client.platforms); the parser, the error policy and the doors read it. Pure."""

from __future__ import annotations

import json

import pytest

from api_client import ErrorKind, GraphAPIError, classify
from api_client.errors import MalformedResponseError
from api_client.models import explain_error_message
from api_client.parsing import parse_container_status
from api_client.platforms import (
    INSTAGRAM,
    THREADS,
    platform_named,
    platform_of_account,
    user_id_of,
)
from worker.core.errors import InvalidIdError
from worker.core.ids import poll_account, validate_children, validate_platform
from worker.core.publishing import PublishVerdict, judge_publish


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_instagram_status_reads_status_code_and_the_subcode_in_its_text() -> None:
    text = "Error: Media upload has failed with error code 2207026"
    got = parse_container_status("1", 200, body(status_code="ERROR", status=text), INSTAGRAM)
    assert (got.status, got.error_message, got.error_code) == ("ERROR", text, 2207026)
    finished = parse_container_status(
        "1", 200, body(status_code="FINISHED", status="Finished: ready"), INSTAGRAM
    )
    # A sentence on every state: a reason only when the container failed.
    assert (finished.status, finished.error_message, finished.error_code) == (
        "FINISHED",
        None,
        None,
    )
    # A bare subcode (what Meta's reference says) reads the same.
    assert (
        parse_container_status(
            "1", 200, body(status_code="ERROR", status="2207020"), INSTAGRAM
        ).error_code
        == 2207020
    )


def test_each_platform_reads_only_its_own_fields() -> None:
    with pytest.raises(MalformedResponseError, match="status_code"):
        parse_container_status("1", 200, body(status="FINISHED"), INSTAGRAM)
    threads = parse_container_status(
        "1", 200, body(status="ERROR", error_message="INVALID_DURATION"), THREADS
    )
    assert (threads.error_message, threads.error_code) == ("INVALID_DURATION", None)


def test_explanations_are_the_platforms() -> None:
    assert "video" in explain_error_message(
        "Error: Media upload has failed with error code 2207026", "instagram"
    )
    assert "too short or too long" in explain_error_message("INVALID_DURATION", "threads")
    assert "does not know" in explain_error_message("Error: code 9999999", "instagram")
    # An unknown platform name (data edited by hand) reads as Threads, never raises.
    assert "too short" in explain_error_message("INVALID_DURATION", "myspace")


def graph(code: int, subcode: int | None = None, platform: str = "threads") -> GraphAPIError:
    err = GraphAPIError("x", code=code, subcode=subcode, http_status=400)
    err.platform = platform
    return err


def test_classification_depends_on_the_platform_that_answered() -> None:
    assert classify(graph(80002, platform="instagram")) is ErrorKind.THROTTLED
    assert classify(graph(80002)) is ErrorKind.UNKNOWN
    # 4/2207051 is a spam restriction on Instagram: fatal, not a pause.
    assert classify(graph(4, 2207051, "instagram")) is ErrorKind.RESTRICTED
    assert ErrorKind.RESTRICTED.is_fatal
    assert classify(graph(4, 2207051)) is ErrorKind.THROTTLED
    assert classify(graph(4, platform="instagram")) is ErrorKind.THROTTLED


def test_publish_verdicts_of_instagram_refusals() -> None:
    assert judge_publish(graph(-2, 2207020, "instagram")) is PublishVerdict.EXPIRED
    assert judge_publish(graph(9, 2207042, "instagram")) is PublishVerdict.QUOTA_EXHAUSTED
    assert judge_publish(graph(4, 2207051, "instagram")) is PublishVerdict.FAILED


def test_accounts_are_per_platform() -> None:
    assert poll_account("17841", INSTAGRAM) == "instagram:17841"
    assert poll_account(None, INSTAGRAM) == "instagram"
    assert poll_account("17841", THREADS) == "17841"
    assert poll_account(None, THREADS) is None
    assert platform_of_account("instagram:17841") is INSTAGRAM
    assert platform_of_account("instagram") is INSTAGRAM
    assert platform_of_account("17841") is THREADS
    assert (user_id_of("instagram:17841"), user_id_of("instagram"), user_id_of("5")) == (
        "17841",
        "",
        "5",
    )
    with pytest.raises(InvalidIdError):
        poll_account("instagram:17841", INSTAGRAM)  # a key is not a user id


def test_the_door_checks_the_platform_and_its_carousel_size() -> None:
    assert validate_platform(None) is THREADS and validate_platform(" Instagram ") is INSTAGRAM
    with pytest.raises(InvalidIdError, match="unknown platform"):
        validate_platform("myspace")
    with pytest.raises(InvalidIdError, match="platform must be a string"):
        validate_platform(7)
    kids = [str(100 + i) for i in range(11)]
    assert len(validate_children(kids, parent="1")) == 11
    with pytest.raises(InvalidIdError, match="2 to 10 children"):
        validate_children(kids, parent="1", max_children=INSTAGRAM.max_children)
    with pytest.raises(ValueError, match="unknown platform"):
        platform_named("tiktok")


def test_the_account_effect_of_an_answer_is_planned_not_decided_by_the_job() -> None:
    from api_client.models import ContainerStatus
    from api_client.usage import ApiUsage
    from worker.core.planner import AccountEffect, Pause, account_effect, publish_account_effect

    ok = ContainerStatus("1", "FINISHED")
    assert account_effect(ok, throttle_level=0, usage_throttle_percent=90) == AccountEffect()
    # Not throttled while the account was: its back-off ends.
    assert account_effect(ok, throttle_level=2, usage_throttle_percent=90).clear_throttle
    near = ContainerStatus("1", "IN_PROGRESS", usage=ApiUsage(95.0, 0.0))
    assert account_effect(near, throttle_level=0, usage_throttle_percent=90) == AccountEffect(
        pause=Pause("usage", 0.0, 95.0)
    )
    throttled = graph(80002, platform="instagram")
    assert account_effect(throttled, throttle_level=1, usage_throttle_percent=90) == (
        AccountEffect(pause=Pause("80002"))
    )
    token = graph(190)
    assert account_effect(token, throttle_level=0, usage_throttle_percent=90).reject_token
    assert publish_account_effect(PublishVerdict.THROTTLED, graph(4)).pause == Pause("4")
    assert publish_account_effect(PublishVerdict.FAILED, graph(100)) == AccountEffect()
