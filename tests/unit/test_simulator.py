"""The Threads API simulator without a server (pure): step labels, the CLI's arguments. Over
real loopback HTTP: tests/integration/test_simulator.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator import ConfigError, SimulatorState, SlowStep, StatusStep, StepError, parse_step
from simulator.records import Published, QuotaSnapshot, Reply
from simulator.server import build_parser, main, state_from_args


def test_step_labels_round_trip() -> None:
    for raw in [
        "IN_PROGRESS",
        "ERROR",
        "ERROR:FAILED_DOWNLOADING_VIDEO",
        "STATUS:SOMETHING_NEW",
        "500",
        "throttle:613",
        "perm:200",
        "badjson:array",
        "drop",
        "slow:1.5:ERROR:UNKNOWN",
        "slow:2",
    ]:
        assert parse_step(raw).label == raw
    assert parse_step("slow:0.5:slow:1:FINISHED") == SlowStep(
        0.5, SlowStep(1.0, StatusStep("FINISHED"))
    )


@pytest.mark.parametrize(
    "raw",
    ["", "finished", "ERROR:", "STATUS:", "throttle:5", "perm:300", "slow:x", "slow:-1", "nope"],
)
def test_bad_steps_are_refused(raw: str) -> None:
    with pytest.raises(StepError):
        parse_step(raw)


def test_cli_arguments_build_the_state(tmp_path: Path) -> None:
    scripts_file = tmp_path / "scripts.json"
    scripts_file.write_text(json.dumps({"1*": ["IN_PROGRESS"], "2": ["ERROR:A, B"]}))
    args = build_parser().parse_args(
        [
            "--scripts-file",
            str(scripts_file),
            "--script",
            "1*=FINISHED",
            "--script",
            "3=500,FINISHED",
            "--default-script",
            "EXPIRED",
            "--fault-rate",
            "0.1",
            "--fault-kinds",
            "500,slow",
            "--token",
            "abc=u1",
            "--token",
            "plain",
            "--expired-token",
            "old",
        ]
    )
    state = state_from_args(args)
    assert state.scripts == {"1*": ["FINISHED"], "2": ["ERROR:A, B"], "3": ["500", "FINISHED"]}
    assert state.default_script == ["EXPIRED"]
    assert state.faults == {"rate": 0.1, "kinds": ["500", "slow"], "slow_seconds": 3.0}


@pytest.mark.parametrize(
    "argv",
    [["--script", "1=BOGUS"], ["--script", "noequals"], ["--fault-rate", "3"]],
)
def test_cli_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2


# --- issue 14: carousels and replies, as the simulator serves them ----------------------------


def _clocked() -> tuple[SimulatorState, list[float]]:
    now = [100.0]
    return SimulatorState(default_script=["FINISHED"], clock=lambda: now[0]), now


def _label(reply: Reply) -> str:
    outcome = reply.outcome
    if isinstance(outcome, Published):
        return "published"
    assert not isinstance(outcome, QuotaSnapshot)
    return outcome.label


def test_a_carousel_publishes_only_once_its_children_and_itself_are_finished() -> None:
    state, _ = _clocked()
    state.set_carousel("1", ["11", "12"])
    state.set_script("12", ["IN_PROGRESS", "FINISHED"])
    state.handle_status("11", "t")
    state.handle_status("12", "t")  # IN_PROGRESS
    state.handle_status("1", "t")  # a status call the client should not have made
    assert state.calls_for("1").early_parent_calls == 1
    assert _label(state.handle_publish("me", "1", "t")) == "not_ready"
    state.handle_status("12", "t")  # FINISHED
    assert _label(state.handle_publish("me", "1", "t")) == "published"
    assert state.quota_of("default")["quota_usage"] == 1  # one post
    with pytest.raises(ConfigError):
        state.set_carousel("1", ["11"])


def test_a_reply_spends_the_reply_quota_unless_published_too_soon() -> None:
    state, now = _clocked()
    state.set_reply("5", "900", settle_seconds=10.0)
    state.set_reply("6", "900", settle_seconds=10.0)
    state.handle_status("5", "t")
    state.handle_status("6", "t")
    assert _label(state.handle_publish("me", "5", "t")) == "published"
    # Too soon after FINISHED: out as a standalone post (the post quota), reply_to_id lost.
    assert state.calls_for("5").lost_reply_to == 1
    assert state.quota_of("default")["quota_usage"] == 1
    now[0] += 10.0
    assert _label(state.handle_publish("me", "6", "t")) == "published"
    assert state.calls_for("6").lost_reply_to == 0
    assert state.quota_of("default")["reply_quota_usage"] == 1
    state.set_reply("7", "900")
    state.set_quota("default", reply_quota_usage=1000, quota_usage=0)
    state.handle_status("7", "t")
    assert _label(state.handle_publish("me", "7", "t")) == "reply_quota_exceeded"


@pytest.mark.parametrize(
    ("fault", "label"),
    [
        ("code10_after_publish", "code10_after_publish"),
        ("noid_after_publish", "noid_after_publish"),
    ],
)
def test_ambiguous_publish_faults_publish_all_the_same(fault: str, label: str) -> None:
    state, _ = _clocked()
    state.set_publish_fault("8", fault)
    state.handle_status("8", "t")
    assert _label(state.handle_publish("me", "8", "t")) == label
    assert state.published_media_id("8") is not None
    assert state.calls_for("8").publishes == 1


def test_the_cli_takes_carousels_and_replies() -> None:
    args = build_parser().parse_args(["--carousel", "1=11,12", "--reply", "5=900:2.5"])
    state = state_from_args(args)
    assert state.carousels == {"1": ["11", "12"]}
    assert state.replies == {"5": {"reply_to": "900", "settle_seconds": 2.5}}


def test_intake_entries_carry_carousels_and_replies() -> None:
    from worker.core.errors import BadEntryError
    from worker.runtime.intake import parse_entry

    req = parse_entry(
        {b"container_id": b"1", b"children": b"11, 12", b"reply_to": b"900"}, max_bytes=4096
    )
    assert (req.children, req.reply_to) == (("11", "12"), "900")
    for bad in (b"11", b"11,1", b"11,x"):
        with pytest.raises(BadEntryError):
            parse_entry({b"container_id": b"1", b"children": bad}, max_bytes=4096)
    with pytest.raises(BadEntryError):
        parse_entry({b"container_id": b"1", b"reply_to": b"abc"}, max_bytes=4096)
