"""Issue 21: job data is JSON that cannot execute (worker/store/jobdata.py). Pure.

Our jobs round-trip exactly (a webhook's signed body byte for byte), through arq's own hooks
too; a pickle (an earlier release's format, or a malicious one), garbage, or arguments of the
wrong types for our functions raise one typed error and are never unpickled.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from arq.jobs import deserialize_job, serialize_job
from hypothesis import given
from hypothesis import strategies as st

from worker.core.result import PollResult
from worker.core.webhooks import body_for
from worker.store.jobdata import (
    CHECK_FUNCTION,
    DELIVER_FUNCTION,
    MAX_JOB_DATA_BYTES,
    JobCall,
    JobDataError,
    decode_job,
    encode_job,
    job_by_id,
    job_deserializer,
    job_serializer,
)
from worker.store.keys import Keys


class Opens:
    """A pickle that creates ``path`` when it is unpickled (what an attacker would write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_check_job_round_trips_as_plain_json() -> None:
    data = encode_job(CHECK_FUNCTION, ("17890", "3f2a9c1b0d4e"), 1_795_438_388_610)
    assert json.loads(data) == {
        "v": 1,
        "t": None,
        "f": "check_container",
        "a": ["17890", "3f2a9c1b0d4e"],
        "k": {},
        "et": 1_795_438_388_610,
    }
    assert decode_job(data) == JobCall(CHECK_FUNCTION, ("17890", "3f2a9c1b0d4e"))


@given(body=st.binary(max_size=2000), url=st.text(max_size=200))
def test_a_webhook_body_comes_back_byte_for_byte(body: bytes, url: str) -> None:
    data = encode_job(DELIVER_FUNCTION, ("9501", "gen", body, url), 1)
    call = decode_job(data)
    assert call.args == ("9501", "gen", body, url)
    assert type(call.args[2]) is bytes


def test_a_real_signed_body_round_trips() -> None:
    fields: dict[bytes | str, bytes | str] = {
        "container_id": "9501",
        "status": "ERROR",
        "final": "1",
        "generation": "g1",
    }
    result = PollResult.from_hash({**fields, "last_error": 'd\u00e9j\u00e0 \u2713 \\ "'})
    body = body_for(result, "tp:webhook:9501:g1")
    call = decode_job(encode_job(DELIVER_FUNCTION, ("9501", "g1", body, "https://x.test/h"), 5))
    assert call.args[2] == body


def test_arqs_own_functions_use_the_hooks() -> None:
    """arq's serialize_job / deserialize_job (what enqueue_job, Job.info and arq's worker call)
    given the hooks write and read this format."""
    data = serialize_job(
        "flaky", (7, "x", b"\x00\xff"), {"n": 1}, 3, 1000, serializer=job_serializer
    )
    assert json.loads(data)["a"] == [7, "x", {"$bytes": "AP8="}]
    jd = deserialize_job(data, deserializer=job_deserializer)
    assert (jd.function, jd.args, jd.kwargs, jd.job_try) == (
        "flaky",
        (7, "x", b"\x00\xff"),
        {"n": 1},
        3,
    )
    assert int(jd.enqueue_time.timestamp() * 1000) == 1000


def test_a_pickle_is_refused_and_never_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = tmp_path / "pwned"

    def no_pickle(*_: object, **__: object) -> object:
        raise AssertionError("pickle was called on job data")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    old = serialize_job(CHECK_FUNCTION, ("1", "g"), {}, None, 1)  # the previous release's format
    malicious = serialize_job(CHECK_FUNCTION, (Opens(evil),), {}, None, 1)
    for data in (old, malicious):
        with pytest.raises(JobDataError, match="pickle"):
            decode_job(data)
        with pytest.raises(JobDataError):
            job_deserializer(data)
    assert not evil.exists()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not JSON"),
        (b"garbage", "not JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'{"v":1}', "fields"),
        (b"[1,2]", "not JSON"),
        (b'{"v":2,"t":null,"f":"x","a":[],"k":{},"et":1}', "version"),
        (b'{"v":true,"t":null,"f":"x","a":[],"k":{},"et":1}', "version"),
        (b'{"v":1,"t":null,"f":"","a":[],"k":{},"et":1}', "no function"),
        (b'{"v":1,"t":null,"f":7,"a":[],"k":{},"et":1}', "no function"),
        (b'{"v":1,"t":null,"f":"x","a":{},"k":{},"et":1}', "not a list"),
        (b'{"v":1,"t":"1","f":"x","a":[],"k":{},"et":1}', "not an integer"),
        (b'{"v":1,"t":null,"f":"x","a":[],"k":{},"et":1.5}', "not an integer"),
        (b'{"v":1,"t":null,"f":"x","a":[NaN],"k":{},"et":1}', "NaN"),
        (b'{"v":1,"t":null,"f":"x","a":[{"$bytes":"***"}],"k":{},"et":1}', "base64"),
        (b'{"v":1,"t":null,"f":"x","a":[{"$bytes":1}],"k":{},"et":1}', "base64"),
        (b'{"v":1,"t":null,"f":"x","a":[],"k":{},"et":1,"extra":1}', "fields"),
        (b'{"v":1,"t":null,"f":"check_container","a":[1,2],"k":{},"et":1}', "types"),
        (b'{"v":1,"t":null,"f":"check_container","a":["1"],"k":{},"et":1}', "types"),
        (b'{"v":1,"t":null,"f":"check_container","a":["1","g"],"k":{"x":1},"et":1}', "types"),
        (
            b'{"v":1,"t":null,"f":"deliver_webhook","a":["1","g","body","u"],"k":{},"et":1}',
            "types",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
        (b"{" + b" " * MAX_JOB_DATA_BYTES + b"}", "bytes"),
    ],
)
def test_what_is_not_the_format_raises_one_error(data: bytes, why: str) -> None:
    with pytest.raises(JobDataError, match=why):
        decode_job(data)
    with pytest.raises(JobDataError):
        job_deserializer(data)


def test_what_json_cannot_hold_is_refused_at_encode() -> None:
    for args in ((object(),), ({"$bytes": "AA=="},), (float("nan"),), ("\ud800",)):
        with pytest.raises(JobDataError):
            encode_job("x", args, 1)
    with pytest.raises(JobDataError, match="types"):
        encode_job(CHECK_FUNCTION, ("1", 2), 1)
    with pytest.raises(JobDataError):
        job_serializer({"f": "x"})


def test_a_jobs_id_says_what_it_is() -> None:
    keys = Keys("tp")
    assert job_by_id(keys, "tp:check:17890:3f2a") == JobCall(CHECK_FUNCTION, ("17890", "3f2a"))
    assert job_by_id(keys, "tp:webhook:17890:3f2a") == JobCall(DELIVER_FUNCTION, ("17890", "3f2a"))
    # As claim.lua splits it: the generation is what follows the last ':'.
    assert job_by_id(keys, "tp:check:a:b:c") == JobCall(CHECK_FUNCTION, ("a:b", "c"))
    for foreign in ("tp:check:17890", "tp:check:17890:", "tp:check::g", "tpx:check:1:g", "job-1"):
        assert job_by_id(keys, foreign) is None
