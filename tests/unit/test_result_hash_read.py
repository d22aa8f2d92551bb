"""A result hash read field by kind (``PollResult.from_hash``, issue 22) gives what reading every
field by name did: the function below is the reader it replaced, kept as the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from hypothesis import given
from hypothesis import strategies as st

from worker.core.result import _ABSENT, _READ, PollResult, _num

NAMES = [f.name for f in fields(PollResult)]


def read_every_field(raw: Mapping[bytes | str, bytes | str]) -> PollResult:
    h = {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        )
        for k, v in raw.items()
    }

    def opt(name: str) -> str | None:
        return h.get(name) or None

    def opt_int(name: str) -> int | None:
        value = _num(h.get(name))
        return None if value is None else int(value)

    enqueued_at = _num(h.get("enqueued_at"))
    next_check_at = _num(h.get("next_check_at"))
    if next_check_at is None and "updated_at" not in h:
        # Written by an older version's enqueue: the first check was due at once.
        next_check_at = enqueued_at
    return PollResult(
        container_id=h.get("container_id", ""),
        status=h.get("status", ""),
        final=h.get("final") == "1",
        error_message=opt("error_message"),
        error_explanation=opt("error_explanation"),
        last_api_status=opt("last_api_status"),
        checks=opt_int("checks") or 0,
        enqueued_at=enqueued_at,
        deadline_at=_num(h.get("deadline_at")),
        last_checked_at=_num(h.get("last_checked_at")),
        next_check_at=next_check_at,
        finalized_at=_num(h.get("finalized_at")),
        last_error=opt("last_error"),
        last_error_kind=opt("last_error_kind"),
        last_error_code=opt_int("last_error_code"),
        last_error_subcode=opt_int("last_error_subcode"),
        last_error_fbtrace_id=opt("last_error_fbtrace_id"),
        throttled=opt_int("throttled") or 0,
        window_delay=_num(h.get("window_delay")) or 0.0,
        last_throttled_at=_num(h.get("last_throttled_at")),
        publish=h.get("publish") == "1",
        publish_status=opt("publish_status"),
        publish_attempts=opt_int("publish_attempts") or 0,
        media_id=opt("media_id"),
        published_at=_num(h.get("published_at")),
        finished_at=_num(h.get("finished_at")),
        quota_usage=opt_int("quota_usage"),
        quota_total=opt_int("quota_total"),
        webhook_url=opt("webhook_url"),
        webhook_status=opt("webhook_status"),
        webhook_attempts=opt_int("webhook_attempts") or 0,
        account=opt("account"),
        generation=h.get("generation", ""),
        runs=opt_int("runs") or 0,
        strikes=opt_int("strikes") or 0,
        intake_entry=opt("intake_entry"),
        reply_to=opt("reply_to"),
        children=tuple(c for c in (h.get("children") or "").split(",") if c),
        children_pending=opt_int("children_pending") or 0,
        children_ready_at=_num(h.get("children_ready_at")),
        failed_child=opt("failed_child"),
        failed_child_status=opt("failed_child_status"),
        failed_child_error=opt("failed_child_error"),
        carousel_parent=opt("carousel_parent"),
        parent_generation=opt("parent_generation"),
        reply_quota_usage=opt_int("reply_quota_usage"),
        reply_quota_total=opt_int("reply_quota_total"),
        publish_note=opt("publish_note"),
        publish_verify=h.get("publish_verify") == "1",
    )


VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "2",
            "-3",
            "1.5",
            "1e3",
            "inf",
            "-inf",
            "nan",
            "x",
            "1795438388.610",
            "1,2,,3",
            ",",
            "FINISHED",
            " 4 ",
        ]
    ),
    st.text(max_size=12),
)
KEYS = st.sampled_from([*NAMES, "updated_at", "unknown", "next_check_at", "enqueued_at"])


def as_raw(items: list[tuple[str, str, bool, bool]]) -> dict[bytes | str, bytes | str]:
    raw: dict[bytes | str, bytes | str] = {}
    for key, value, key_bytes, value_bytes in items:
        k: bytes | str = key.encode() if key_bytes else key
        v: bytes | str = value.encode("utf-8", "surrogatepass") if value_bytes else value
        raw[k] = v
    return raw


@given(st.lists(st.tuples(KEYS, VALUES, st.booleans(), st.booleans()), max_size=25))
def test_any_hash_reads_as_it_did(items: list[tuple[str, str, bool, bool]]) -> None:
    raw = as_raw(items)
    assert PollResult.from_hash(raw) == read_every_field(raw)


def test_bytes_that_are_not_utf8_read_as_they_did() -> None:
    raw: dict[bytes | str, bytes | str] = {
        b"status": b"\xff\xfe",
        b"checks": b"\xff",
        b"x\xff": b"1",
    }
    assert PollResult.from_hash(raw) == read_every_field(raw)


def test_every_field_has_a_kind() -> None:
    assert set(_READ) == set(NAMES)
    assert set(_ABSENT) == {*NAMES, "updated_at"}


def test_an_old_enqueues_first_check_is_due_at_once() -> None:
    r = PollResult.from_hash({b"enqueued_at": b"10.5"})
    assert r.next_check_at == 10.5
    assert PollResult.from_hash({b"enqueued_at": b"10.5", b"updated_at": b""}).next_check_at is None
