"""Logging (pure): the redaction's fast path and the JSON formatter. What a running worker
logs: tests/integration/test_logs.py.
"""

from __future__ import annotations

import json
import logging
import time

from hypothesis import given
from hypothesis import strategies as st

from api_client.redact import redact
from config import LogFormat
from worker.ops.logs import _STANDARD, JsonFormatter, RedactingFilter

# --- The redaction's one-look fast path and the JSON formatter (issue 22, closer to the floor) --

SECRET = "THAAsecretTOKENvalue1234"


def scrubbed_part_by_part(record: logging.LogRecord, secrets: list[str]) -> dict[str, object]:
    """What ``RedactingFilter`` did before its fast path: ``redact`` on the message and on every
    text field a caller added."""
    out: dict[str, object] = {"msg": redact(record.getMessage(), secrets)}
    for key, value in vars(record).items():
        if key not in _STANDARD and isinstance(value, str):
            out[key] = redact(value, secrets)
    return out


def filtered(record: logging.LogRecord, secrets: list[str]) -> dict[str, object]:
    assert RedactingFilter(lambda: secrets).filter(record)
    out: dict[str, object] = {"msg": record.msg}
    for key, value in vars(record).items():
        if key not in _STANDARD and isinstance(value, str):
            out[key] = value
    assert record.args is None
    return out


def make_record(msg: str, args: tuple[object, ...], extra: dict[str, object]) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelno": logging.INFO, "msg": msg})
    record.args = args
    for key, value in extra.items():
        setattr(record, key, value)
    return record


PARTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            SECRET,
            f"x{SECRET}y",
            "GET /1?access_token=abc&x=1",
            "ACCESS_TOKEN: 'zz'",
            "Authorization: Bearer abc.def",
            "bEaReR",
            "1790000000000000",
            "FINISHED",
            "",
        ]
    ),
)


@given(
    msg=PARTS,
    arg=PARTS,
    extra=st.dictionaries(
        st.sampled_from(["container_id", "status", "error", "account", "url"]),
        st.one_of(PARTS, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()),
        max_size=5,
    ),
    secrets=st.lists(st.sampled_from([SECRET, "abc", "zz", "1790", "FINI"]), max_size=3),
)
def test_the_filter_scrubs_exactly_what_redact_on_each_part_did(
    msg: str, arg: str, extra: dict[str, object], secrets: list[str]
) -> None:
    """The fast path (nothing to scrub in any part: one look at all of them) changes no outcome:
    every line comes out as ``redact`` on each part made it."""
    fmt = msg.replace("%", "%%") + " %s"
    expected = scrubbed_part_by_part(make_record(fmt, (arg,), extra), secrets)
    assert filtered(make_record(fmt, (arg,), extra), secrets) == expected


def test_a_final_state_line_with_a_token_in_any_field_is_scrubbed() -> None:
    for field in ("container_id", "status", "error", "error_kind"):
        record = make_record("final state", (), {field: f"a {SECRET} b", "checks": 1})
        out = filtered(record, [SECRET])
        assert SECRET not in str(out)
        assert out[field] == "a [REDACTED] b"


def test_the_json_line_is_what_json_dumps_made() -> None:
    formatter = JsonFormatter()
    for created in (1_795_438_388.6104, 1_795_438_388.9999, 1_795_438_389.0, 1_795_438_447.25):
        record = make_record("final state", (), {"status": "FINISHED é", "final": True, "x": 1.5})
        record.created, record.msecs = created, (created - int(created)) * 1000
        line = json.loads(formatter.format(record))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert line["time"] == f"{stamp}.{int(record.msecs):03d}Z"
        assert line["ts"] == round(created, 3)
        assert (line["status"], line["final"], line["x"]) == ("FINISHED é", True, 1.5)
    # Unknown types still go through str(), non-ASCII stays as it is.
    record = make_record("m", (), {"obj": LogFormat.JSON, "t": "é"})
    text = formatter.format(record)
    assert '"obj": "' in text
    assert '"t": "é"' in text
