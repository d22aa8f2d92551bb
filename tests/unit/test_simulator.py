"""The Threads API simulator without a server (pure): step labels, the CLI's arguments. Over
real loopback HTTP: tests/integration/test_simulator.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator import SlowStep, StatusStep, StepError, parse_step
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
