"""Durations as operators type them (``failures --since``, ``?since=``). Pure."""

from __future__ import annotations

import pytest

from worker.core.durations import MAX_SINCE_SECONDS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        (" 1H ", 3600),
        ("7d", MAX_SINCE_SECONDS),
    ],
)
def test_parses(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "required"),
        ("1", "unit"),
        ("h", "unit"),
        ("1.5h", "unit"),
        ("-1h", "unit"),
        ("1 h", "unit"),
        ("1w", "unit"),
        ("0m", "longer than 0"),
        ("30m1h", "largest first"),
        ("1h1h", "each unit once"),
        ("8d", "longer than 7d"),
        ("1" * 40 + "s", "longer than 32"),
    ],
)
def test_refuses_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_duration(text)


def test_a_bound_of_its_own() -> None:
    assert parse_duration("10m", max_seconds=600) == 600
    with pytest.raises(ValueError, match="longer than 10m"):
        parse_duration("11m", max_seconds=600)


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3599, 3600, 5400, 86399, 93784, 604800])
def test_format_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds), max_seconds=10**7) == seconds


def test_format_rounds_down_and_names_zero() -> None:
    assert format_duration(90.9) == "1m30s"
    assert format_duration(0) == "0s"
    assert format_duration(-5) == "0s"
