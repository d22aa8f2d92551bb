"""Tracing's pure rules (worker/core/tracing.py): which variables turn traces on, and what a
``traceparent`` may be at every door."""

from __future__ import annotations

import pytest

from worker.core.result import PollResult
from worker.core.tracing import (
    TraceparentError,
    check_traceparent,
    optional_traceparent,
    poll_traceparent,
    trace_exporters,
    trace_id_of,
    tracing_wanted,
)

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # naming the service asks for nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_variables_ask(env: dict[str, str], on: bool) -> None:
    assert tracing_wanted(env) is on


def test_the_exporters_named() -> None:
    assert trace_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) == ("otlp",)
    assert trace_exporters({"OTEL_TRACES_EXPORTER": "otlp, console,otlp"}) == ("otlp", "console")
    assert trace_exporters({"OTEL_TRACES_EXPORTER": "none"}) == ()


def test_a_valid_traceparent_passes_unchanged() -> None:
    assert check_traceparent(TP) == TP
    assert optional_traceparent(TP) == TP
    assert optional_traceparent(None) is None
    assert optional_traceparent("") is None
    assert trace_id_of(TP) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "bad",
    [
        TP.upper(),  # upper-case hex
        TP + "-extra",  # a future version's extra field: refused, not guessed at
        "01" + TP[2:],  # another version
        "ff" + TP[2:],
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero parent id
        TP.replace("-", "_"),
        TP[:-1] + "g",
        " " + TP[1:],
        TP[:54] + "\n",
        "x" * 10_000,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'; redis.call('FLUSHALL') --",
    ],
)
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(TraceparentError) as caught:
        check_traceparent(bad)
    # The reason never echoes what came from outside.
    assert bad not in str(caught.value)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(TraceparentError):
        check_traceparent(12)


def test_a_poll_without_a_trace_gets_one_of_its_own_the_same_in_every_worker() -> None:
    one = poll_traceparent("17890", "3f2a9c1b0d4e")
    assert check_traceparent(one) == one
    assert poll_traceparent("17890", "3f2a9c1b0d4e") == one
    assert trace_id_of(poll_traceparent("17890", "000000000001")) != trace_id_of(one)


def test_the_result_hash_yields_only_a_valid_traceparent() -> None:
    base: dict[bytes | str, bytes | str] = {
        "container_id": "1",
        "status": "QUEUED",
        "final": "0",
        "generation": "g",
    }
    assert PollResult.from_hash({**base, "traceparent": TP}).traceparent == TP
    assert PollResult.from_hash({**base, "traceparent": "junk"}).traceparent is None
    assert PollResult.from_hash(base).traceparent is None
    # Never shown in a result (the API's document has no such field).
    assert "traceparent" not in PollResult.from_hash({**base, "traceparent": TP}).to_dict()


def test_the_documents_pattern_is_the_doors_rule() -> None:
    """What a door takes is what the pattern allows (all-zero ids fit it and are ignored)."""
    import re

    from worker.core.tracing import TRACEPARENT_PATTERN, TraceparentError, producer_traceparent

    good = f"00-{'a' * 32}-{'b' * 16}-01"
    samples = {
        good: good,
        f"00-{'0' * 32}-{'b' * 16}-01": None,
        f"00-{'a' * 32}-{'0' * 16}-01": None,
        f"00-{'A' * 32}-{'b' * 16}-01": "refused",
        f"01-{'a' * 32}-{'b' * 16}-01": "refused",
        good + "\n": "refused",
        "": "refused",
    }
    for raw, taken in samples.items():
        try:
            got: str | None = producer_traceparent(raw)
        except TraceparentError:
            got = "refused"
        assert got == taken, repr(raw)
        assert (got != "refused") == bool(re.fullmatch(TRACEPARENT_PATTERN, raw)), repr(raw)
