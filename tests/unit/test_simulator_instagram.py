"""The simulator's Instagram rendering (pure functions) and its 24 h publishing window."""

from __future__ import annotations

import pytest

from simulator import PUBLISH_FAULTS, SimulatorState, StatusStep, parse_step
from simulator.instagram import (
    IG_PUBLISH_FAULTS,
    buc_usage,
    container_body,
    error_type,
    nonexisting_field,
    quota_body,
    status_text,
    unknown_container_field,
)
from simulator.records import Published, QuotaSnapshot, Reply


@pytest.mark.parametrize(
    ("step", "text"),
    [
        (StatusStep("IN_PROGRESS"), "In Progress: Media is still being processed."),
        (
            StatusStep("FINISHED"),
            "Finished: Media has been uploaded and it is ready to be published.",
        ),
        (StatusStep("PUBLISHED"), "Published: Media has been successfully published."),
        (StatusStep("EXPIRED"), "Expired: Media was not published within 24 hours."),
        (StatusStep("ERROR", "2207026"), "Error: Media upload has failed with error code 2207026"),
        (StatusStep("ERROR"), "Error: Media upload has failed with error code 2207053"),
        (StatusStep("ERROR", "Something broke: 42"), "Something broke: 42"),
        (StatusStep("ERROR", "-2207026"), "-2207026"),  # not all digits: verbatim
        (StatusStep("PAUSED"), "PAUSED"),
    ],
)
def test_status_text(step: StatusStep, text: str) -> None:
    assert status_text(step) == text


def test_a_step_string_gives_the_same_text() -> None:
    step = parse_step("ERROR:2207001")
    assert isinstance(step, StatusStep)
    assert status_text(step) == "Error: Media upload has failed with error code 2207001"


def test_container_body_returns_requested_fields_and_id() -> None:
    step = StatusStep("ERROR", "2207026")
    assert container_body(step, "9", []) == {"id": "9"}
    assert container_body(step, "9", ["status_code"]) == {"status_code": "ERROR", "id": "9"}
    assert container_body(step, "9", ["status", "id"]) == {
        "status": "Error: Media upload has failed with error code 2207026",
        "id": "9",
    }


def test_unknown_fields_are_named_first_come() -> None:
    assert unknown_container_field(["status_code", "status", "id"]) is None
    assert unknown_container_field(["status", "error_message", "x"]) == "error_message"
    error = nonexisting_field("error_message")
    assert (error.http_status, error.code, error.subcode) == (400, 100, None)
    assert error.message == (
        "Tried accessing nonexisting field (error_message) on node type (ShadowIGMediaBuilder)"
    )


def test_quota_body() -> None:
    assert quota_body(3, 50, []) == {"data": [{"quota_usage": 3}]}
    assert quota_body(3, 50, ["quota_usage", "config", "reply_config"]) == {
        "data": [{"quota_usage": 3, "config": {"quota_total": 50, "quota_duration": 86400}}]
    }


def test_error_types_and_buc_usage() -> None:
    assert error_type("THApiException") == "OAuthException"
    assert error_type("GraphMethodException") == "GraphMethodException"
    assert buc_usage("17")["17"][0]["type"] == "instagram"
    assert buc_usage("17")["17"][0]["estimated_time_to_regain_access"] == 1


def test_instagram_publish_faults_are_publish_faults() -> None:
    assert {*IG_PUBLISH_FAULTS, "buc_throttle"} <= set(PUBLISH_FAULTS)
    codes = {name: (s.code, s.subcode) for name, s in IG_PUBLISH_FAULTS.items()}
    assert codes == {
        "ig_daily_limit": (9, 2207042),
        "ig_spam": (4, 2207051),
        "ig_expired": (-2, 2207020),
    }


def _label(reply: Reply) -> str:
    outcome = reply.outcome
    if isinstance(outcome, Published):
        return "published"
    assert not isinstance(outcome, QuotaSnapshot)
    return outcome.label


def test_publishes_count_for_24_hours_then_leave_the_quota() -> None:
    now = [1000.0]
    state = SimulatorState(default_script=["FINISHED"], clock=lambda: now[0])
    state.set_ig_quota("u", quota_total=2)
    assert _label(state.handle_publish("u", "a", "t", platform="instagram")) == "published"
    now[0] += 3600
    assert _label(state.handle_publish("u", "b", "t", platform="instagram")) == "published"
    assert _label(state.handle_publish("u", "c", "t", platform="instagram")) == "ig_daily_limit"
    now[0] += 86400 - 3600  # the first publish is 24 h old: out of the window
    assert state.ig_quota_of("u")["quota_usage"] == 1
    assert _label(state.handle_publish("u", "c", "t", platform="instagram")) == "published"
    # The offset adds to the window and survives a plain reset, like Threads' usage.
    state.set_ig_quota("u", quota_usage=5, quota_total=100)
    state.reset()
    assert state.ig_quota_of("u")["quota_usage"] == 7
    state.reset(rules=True)
    assert state.ig_quota_of("u") == {
        "quota_usage": 0,
        "quota_total": 100,
        "quota_duration": 86400,
        "offset": 0,
        "published_24h": 0,
    }
