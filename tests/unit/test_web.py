"""The HTTP API's pure parts: request checks, JSON shapes, the chart, the OpenAPI document
against the route table, the keys files. No server, no Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.core.result import PollResult
from worker.ops.stats import MinuteStats
from worker.store.admin import DeadLetter, DeadLetterKind, FinalEvent
from worker.web import openapi
from worker.web.auth import KeysError, KeySource
from worker.web.chart import STRIP, chart
from worker.web.errors import CODES, ApiError
from worker.web.requests import (
    ACCOUNT_CURSOR_PATTERN,
    INFLIGHT_CURSOR_PATTERN,
    NO_BODY,
    STREAM_CURSOR_PATTERN,
    parse_cancel,
    parse_container_id,
    parse_cursor,
    parse_enqueue,
    parse_last_event_id,
    parse_letter_id,
    parse_limit,
    parse_since,
    parse_wait,
)
from worker.web.routes import API_ROUTES, ROUTES
from worker.web.sse import frame
from worker.web.views import dead_letter_json, event_json, mask_url, result_json

KEY = "rw-key-0123456789abcdef"


def code_of(body: Any, **kw: Any) -> str:
    with pytest.raises(ApiError) as caught:
        parse_enqueue(body, max_batch=kw.get("max_batch", 3))
    return caught.value.code


def test_enqueue_one_or_a_batch() -> None:
    one = parse_enqueue({"container_id": " 123 "}, max_batch=3)
    assert (one.ids, one.single, one.force, one.account) == (["123"], True, False, None)
    many = parse_enqueue(
        {
            "container_ids": ["1", "2", "3"],
            "account": "42",
            "force": True,
            "publish": True,
            "webhook_url": "https://hooks.example/x",
            "window_seconds": 60,
        },
        max_batch=3,
    )
    assert many.ids == ["1", "2", "3"] and not many.single
    assert (many.account, many.force, many.publish, many.window_seconds) == ("42", True, True, 60.0)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], "invalid_body"),
        ("123", "invalid_body"),
        ({}, "invalid_body"),
        ({"container_id": "1", "container_ids": ["2"]}, "invalid_body"),
        ({"container_id": "1", "priority": 1}, "unknown_field"),
        ({"container_id": 123}, "invalid_id"),
        ({"container_id": "12x"}, "invalid_id"),
        ({"container_id": ""}, "invalid_id"),
        ({"container_ids": "123"}, "invalid_body"),
        ({"container_ids": []}, "empty_batch"),
        ({"container_ids": ["1", "2", "3", "4"]}, "batch_too_large"),
        ({"container_ids": ["1", None]}, "invalid_id"),
        ({"container_ids": ["1", "2x"]}, "invalid_id"),
        ({"container_id": "1", "account": "acme"}, "invalid_id"),
        ({"container_id": "1", "account": 42}, "invalid_body"),
        ({"container_id": "1", "webhook_url": "ftp://x"}, "invalid_id"),
        ({"container_id": "1", "force": "yes"}, "invalid_body"),
        ({"container_id": "1", "publish": 1}, "invalid_body"),
        # The document says boolean: null is refused, not read as false.
        ({"container_id": "1", "publish": None}, "invalid_body"),
        ({"container_id": "1", "force": None}, "invalid_body"),
        ({"container_id": "1", "window_seconds": -1}, "invalid_window"),
        ({"container_id": "1", "window_seconds": 86401}, "invalid_window"),
        ({"container_id": "1", "window_seconds": True}, "invalid_window"),
        ({"container_id": "1", "window_seconds": "60"}, "invalid_window"),
    ],
)
def test_enqueue_refusals_have_stable_codes(body: Any, code: str) -> None:
    assert code_of(body) == code


def test_query_parameters() -> None:
    assert parse_wait(None, max_seconds=60) is None
    assert parse_wait("2.5", max_seconds=60) == 2.5
    assert parse_wait("1e1", max_seconds=60) == 10 and parse_wait("0", max_seconds=60) == 0
    # A number as JSON writes one: float() would also read "1_0", " 1", "+1" and "infinity".
    for bad in ("x", "-1", "61", "nan", "inf", "", "1_0", " 1", "1 ", "+1", "1e400", ".5"):
        with pytest.raises(ApiError, match="wait"):
            parse_wait(bad, max_seconds=60)
    assert parse_limit(None) == 50 and parse_limit("7") == 7
    for bad in ("0", "501", "-1", "1.5", "x", ""):
        with pytest.raises(ApiError, match="limit"):
            parse_limit(bad)
    assert parse_since(None) == 3600 and parse_since("30m") == 1800
    for bad in ("1y", "", "\u0661h", "0h0m"):
        with pytest.raises(ApiError, match="since"):
            parse_since(bad)
    assert parse_last_event_id(None, None) is None
    assert parse_last_event_id("1795438388610-3", None) == "1795438388610-3"
    assert parse_last_event_id(None, "0") == "0-0"
    with pytest.raises(ApiError, match="Last-Event-ID"):
        parse_last_event_id("yesterday", None)
    # The header counts, and the query must be valid too (the document's pattern holds for both).
    assert parse_last_event_id("1-0", "2-0") == "1-0"
    for query in ("", "later"):
        with pytest.raises(ApiError, match="Last-Event-ID"):
            parse_last_event_id("0", query)


def test_cancel_body() -> None:
    assert parse_cancel(NO_BODY) is None
    # JSON null is a body, and not the object the document asks for.
    with pytest.raises(ApiError, match="JSON object"):
        parse_cancel(None)
    assert parse_cancel({"reason": "wrong video"}) == "wrong video"
    with pytest.raises(ApiError):
        parse_cancel({"reason": "x" * 201})
    assert parse_cancel({}) is None
    for bad in (None, 3, ["x"]):  # the document says string: null too is refused
        with pytest.raises(ApiError, match="reason"):
            parse_cancel({"reason": bad})
    with pytest.raises(ApiError):
        parse_cancel({"why": "x"})


def test_mask_url_hides_query_values_and_passwords() -> None:
    assert mask_url("https://hooks.example/x?tenant=a&sig=s3cr3t") == (
        "https://hooks.example/x?tenant=***&sig=***"
    )
    assert (
        mask_url("https://user:pw@hooks.example:8443/x") == "https://user:***@hooks.example:8443/x"
    )
    assert mask_url(None) is None and mask_url("") == ""


def test_result_json_is_the_documented_hash_with_the_webhook_masked() -> None:
    r = PollResult.from_hash(
        {
            "container_id": "1",
            "status": "QUEUED",
            "final": "0",
            "enqueued_at": "1.000",
            "deadline_at": "301.000",
            "generation": "abc",
            "webhook_url": "https://hooks.example/x?token=s3cr3t",
            "intake_entry": "1-0",
        }
    )
    data = result_json(r)
    assert "generation" not in data and "intake_entry" not in data
    assert "s3cr3t" not in str(data)
    schema = openapi.document()["components"]["schemas"]["Result"]
    assert set(schema["required"]) <= set(data)
    Draft202012Validator(schema).validate(data)


def test_dead_letter_json() -> None:
    d = DeadLetter(
        DeadLetterKind.WEBHOOKS,
        "1795438388610-0",
        "HTTP 500",
        {"container_id": "1", "attempts": "3", "url": "https://h.example/x?k=v", "generation": "g"},
        raw_body="{}",
        body={},
    )
    data = dead_letter_json(d)
    assert data["attempts"] == 3 and data["url"] == "https://h.example/x?k=***"
    assert data["at"] == 1795438388.61 and data["replayable"] is True
    intake = DeadLetter(DeadLetterKind.INTAKE, "1-0", "bad", {"container_id": "x...[truncated]"})
    assert dead_letter_json(intake)["replayable"] is False


def test_chart_geometry() -> None:
    minutes = [
        MinuteStats(100, checks=10, finals={"FINISHED": 3, "ERROR": 1}, inflight=20),
        MinuteStats(101, checks=5, finals={}, inflight=None),
        MinuteStats(102),
    ]
    c = chart(minutes)
    assert (c.max_checks, c.max_finals, c.max_inflight) == (10, 4, 20)
    checks = [b for b in c.bars if b.kind == "checks"]
    assert [b.h for b in checks] == [STRIP, STRIP / 2]
    ok = next(b for b in c.bars if b.kind == "ok")
    failed = next(b for b in c.bars if b.kind == "failed")
    assert ok.h == pytest.approx(STRIP * 3 / 4) and failed.h == pytest.approx(STRIP / 4)
    assert failed.y + failed.h == pytest.approx(ok.y)  # stacked on the successes
    assert c.inflight_points.count(",") == 1  # one minute had a sample
    assert (c.total_checks, c.total_ok, c.total_failed) == (15, 3, 1)
    assert chart([]).bars == []


def test_every_api_route_is_documented_and_nothing_else() -> None:
    doc = openapi.document()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routed = {(r.method, r.path) for r in API_ROUTES}
    assert documented == routed
    for r in API_ROUTES:
        op = doc["paths"][r.path][r.method.lower()]
        if r.auth == "none":
            assert op.get("security") == []
        else:
            assert op["x-role"] == r.auth
            assert "401" in op["responses"], r.path
        for name in re.findall(r"{(\w+)}", r.path):
            assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"]), name


def test_the_document_is_valid_json_schema_and_names_every_error_code() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert set(codes["enum"]) == set(CODES)
    statuses = {f"E{s}" for s, _ in CODES.values()}
    assert set(doc["components"]["responses"]) == statuses
    refs = re.findall(r"#/components/responses/(E\d+)", str(doc))
    assert set(refs) <= statuses
    # A copy each time: a caller cannot change the served document.
    doc["paths"].clear()
    assert openapi.document()["paths"]


def test_routes_have_unique_names_and_known_auth() -> None:
    assert len({r.name for r in ROUTES}) == len(ROUTES)
    assert {r.auth for r in ROUTES} == {"none", "read", "write"}
    for r in ROUTES:
        if r.method != "GET":
            assert r.auth in ("write", "none"), r
    assert {r.path for r in ROUTES if r.auth == "none"} == {
        "/healthz",
        "/login",
        "/logout",
        "/static/{name}",
    }


def test_keys_files_are_reread_when_they_change(tmp_path: Path) -> None:
    clock = [0.0]
    keys = tmp_path / "keys"
    keys.write_text(f"# ops\n{KEY}\n")
    source = KeySource(read="ro-key-0123456789abcdef", write_file=keys, clock=lambda: clock[0])
    ring = source.ring()
    assert ring.match(KEY) is not None and ring.match("ro-key-0123456789abcdef") is not None
    new = "rotated-key-0123456789"
    keys.write_text(f"{new}\n")
    assert source.ring().match(new) is None  # looked at again after a second at most
    clock[0] = 1.5
    assert source.ring().match(new) is not None and source.ring().match(KEY) is None
    keys.write_text("short\n")  # broken: the keys read before stay
    clock[0] = 3.0
    assert source.ring().match(new) is not None
    assert KEY not in repr(source.ring()) and new in source.secrets


def test_bad_keys_stop_the_start_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="API_KEYS: a key must be at least 16"):
        KeySource(write="tiny")
    with pytest.raises(KeysError, match="API_KEYS_FILE: cannot read"):
        KeySource(write_file=tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("tiny\n")
    with pytest.raises(KeysError, match="API_READ_KEYS_FILE"):
        KeySource(read_file=bad)
    assert not KeySource().ring().enabled


# ----- the document's patterns are the parsers' rules, both ways --------------------------------


def _param_schema(path: str, method: str, name: str) -> Any:
    op = openapi.document()["paths"][path][method]
    return next(p["schema"] for p in op["parameters"] if p["name"] == name)


def _accepts(parse: Any, raw: str) -> bool:
    try:
        parse(raw)
    except ApiError as exc:
        status = exc.status
    else:
        return True
    assert status in (400, 422)  # a refusal, in the API's error shape
    return False


def _parse_header(raw: str) -> Any:
    return parse_last_event_id(raw, None)


def _cursor_parser(pattern: str) -> Any:
    return lambda raw: parse_cursor(raw, pattern)


def _param_of(path: str, name: str) -> Any:
    return _param_schema(path, "get", name)


CONTRACTS = [
    (_param_of("/v1/finals", "cursor"), _cursor_parser(STREAM_CURSOR_PATTERN)),
    (_param_of("/v1/failures", "cursor"), _cursor_parser(STREAM_CURSOR_PATTERN)),
    (_param_of("/v1/dead-letters/{kind}", "cursor"), _cursor_parser(STREAM_CURSOR_PATTERN)),
    (_param_of("/v1/inflight", "cursor"), _cursor_parser(INFLIGHT_CURSOR_PATTERN)),
    (_param_of("/v1/accounts", "cursor"), _cursor_parser(ACCOUNT_CURSOR_PATTERN)),
    (_param_schema("/v1/containers/{container_id}", "get", "container_id"), parse_container_id),
    (_param_schema("/v1/dead-letters/{kind}/{letter_id}", "delete", "letter_id"), parse_letter_id),
    (_param_schema("/v1/failures", "get", "since"), parse_since),
    (_param_schema("/v1/events", "get", "Last-Event-ID"), _parse_header),
    (
        _param_schema("/v1/events", "get", "last_event_id"),
        lambda raw: parse_last_event_id(None, raw),
    ),
    (
        openapi.document()["components"]["schemas"]["EnqueueRequest"]["properties"]["container_id"],
        lambda raw: parse_enqueue({"container_id": raw}, max_batch=1),
    ),
]
# Around each rule's edges: ASCII digits and not, whitespace str.strip() removes and ECMA-262's
# \s does not (\x1c, \x85, U+FEFF), units in either case, the stream id's dash.
ODD = [
    "",
    "0",
    "00",
    "1",
    "0-0",
    "1-0",
    "1795438388610-0",
    " 1-0\n",
    "1-",
    "-1",
    "1-0-0",
    "1" * 20 + "-" + "1" * 20,
    "1" * 19 + "-" + "1" * 19,
    "9" * 20 + "-0",  # over 2**64: Redis refuses it
    "1" * 21 + "-0",
    "1:2",
    "1795438388.61:123",
    "1.5555:2",
    ":1",
    "1:",
    "1:2\n",
    "1" * 32,
    "1" * 33,
    " 12 ",
    "\x1c12\x85",
    "\ufeff12",
    "\u200312\u3000",
    "12\n",
    "1\n2",
    "\u0661\u0662",
    "+1",
    "1.0",
    "1e3",
    "1h",
    "1H",
    "1h30m",
    "30m1h",
    "1h1h",
    "0s",
    "0h0m1s",
    "00h",
    "1d1h1m1s",
    "999999s",
    "1000000s",
    "1y",
    " 2d ",
    "2D",
    "h",
    "1 h",
]


@pytest.mark.parametrize(("schema", "parse"), CONTRACTS)
def test_each_pattern_in_the_document_is_what_its_parser_accepts(schema: Any, parse: Any) -> None:
    check = Draft202012Validator(schema)
    for raw in ODD:
        # since and until beyond 7d count as 7d (the description says it): accepted, as valid.
        assert check.is_valid(raw) == _accepts(parse, raw), repr(raw)


@settings(max_examples=400, deadline=None)
@given(raw=st.text(alphabet="0123456789-.:dhmsDHMS \t\n\x1c\x85\ufeff\u0661x", max_size=14))
def test_patterns_and_parsers_agree_on_arbitrary_text(raw: str) -> None:
    for schema, parse in CONTRACTS:
        valid = Draft202012Validator(schema).is_valid(raw)
        assert valid == _accepts(parse, raw), (schema, repr(raw))


def test_the_document_gives_this_servers_bounds() -> None:
    wait = _param_schema("/v1/containers/{container_id}", "get", "wait")
    assert wait["maximum"] == openapi.DEFAULT_MAX_WAIT_SECONDS == 60
    served = openapi.document(max_wait_seconds=5, max_batch=7)
    op = served["paths"]["/v1/containers/{container_id}"]["get"]
    assert next(p for p in op["parameters"] if p["name"] == "wait")["schema"]["maximum"] == 5
    batch = served["components"]["schemas"]["EnqueueRequest"]["properties"]["container_ids"]
    assert batch["maxItems"] == 7
    # Asking for other bounds does not change the default document (each is its own copy).
    assert openapi.document()["paths"] == openapi.document()["paths"]
    assert _param_schema("/v1/containers/{container_id}", "get", "wait")["maximum"] == 60


def _doc_validator(name: str) -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = openapi.document()
    urn = "urn:test:openapi"
    registry: Any = Registry().with_resource(
        urn, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": f"{urn}#/components/schemas/{name}"}, registry=registry)


@pytest.mark.parametrize(
    "body",
    [
        {"container_id": "1"},
        {"container_ids": ["1", "2"]},
        {"container_ids": ["1"], "children": None},
        {"container_id": "1", "children": ["2", "3"]},
        # Found by Schemathesis: the document allowed these, the server refuses them.
        {"container_ids": ["1"], "children": ["2", "3"]},  # children go with container_id
        {"container_id": "1", "children": ["2", "2"]},  # distinct children
        # Both ids: the document's oneOf refused it only while each branch matched.
        {"container_id": "1", "container_ids": ["2"]},
        {"container_id": "1", "container_ids": ["2"], "children": ["3", "4"]},
        {},
    ],
)
def test_an_enqueue_body_is_valid_by_the_document_when_the_server_takes_it(body: Any) -> None:
    try:
        parse_enqueue(body, max_batch=3)
    except ApiError:
        taken = False
    else:
        taken = True
    assert _doc_validator("EnqueueRequest").is_valid(body) == taken


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    """What an event stream client sees of ``raw`` (as Schemathesis reads it)."""
    out = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append(fields)
    return out


def test_the_event_stream_is_what_the_document_says() -> None:
    """Found by Schemathesis: the document gave text/event-stream the schema of a string, and
    OpenAPI 3.1 reads that schema as each event's."""
    doc = openapi.document()
    op = doc["paths"]["/v1/events"]["get"]
    assert op["responses"]["200"]["content"]["text/event-stream"]["schema"] == {
        "$ref": "#/components/schemas/ServerSentEvent"
    }
    raw = {"container_id": "1", "status": "ERROR", "checks": "2", "error_message": "x"}
    event = event_json(FinalEvent.of("1-0", raw))
    gap: dict[str, object] = {"after": "1-0", "oldest": "5-0", "reason": "events were trimmed"}
    sse = _doc_validator("ServerSentEvent")
    found = _sse_events(frame("1-0", event) + frame("1-0", gap, "gap"))
    assert [e["event"] for e in found] == ["final", "gap"]
    for got in found:
        sse.validate(got)
        # contentSchema is an annotation to jsonschema: the data checked by hand.
        content = next(
            b["properties"]["data"]["contentSchema"]
            for b in doc["components"]["schemas"]["ServerSentEvent"]["oneOf"]
            if b["properties"]["event"]["const"] == got["event"]
        )
        if "$ref" in content:
            _doc_validator(content["$ref"].rsplit("/", 1)[1]).validate(json.loads(got["data"]))
        else:
            Draft202012Validator(content).validate(json.loads(got["data"]))
    assert not sse.is_valid({"event": "final", "id": "1-0"})  # no data
    assert not sse.is_valid({"event": "other", "id": "1-0", "data": "{}"})


def test_since_and_until_beyond_seven_days_count_as_seven() -> None:
    from worker.core.durations import MAX_SINCE_SECONDS
    from worker.web.requests import parse_until

    assert parse_since("999999s") == MAX_SINCE_SECONDS
    assert parse_until("73d573121m819100s") == MAX_SINCE_SECONDS
    assert parse_since("2d") == 2 * 86400
