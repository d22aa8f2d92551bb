"""Issue 15, item 4: every parser of outside input, fed arbitrary input by hypothesis.

Each must answer with its value or its typed error, never another exception, and never hang
(each example has a deadline). The parsers with tests of their own fuzz elsewhere too:
``parse_target`` and the allowlist (test_targets.py), the tokens file (test_secret_files.py),
the Graph API's bodies (test_parsing.py).
"""

from __future__ import annotations

import string
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api_client.usage import parse_usage_headers
from config import Settings, SettingsError, load_settings
from config.settings import parse_retry_schedule, redacted_url
from config.webhook_keys import WebhookKeyError, parse_secrets
from simulator.steps import MAX_SCRIPT_STEPS, StepError, parse_step, parse_step_list, parse_steps
from worker.core.errors import BadEntryError, InvalidIdError
from worker.core.ids import validate_batch, validate_id
from worker.core.result import PollResult
from worker.core.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_standard
from worker.core.targets import WebhookPolicy
from worker.jobs.webhook import verify_signature
from worker.ops.health import Beat
from worker.runtime.intake import parse_entry
from worker.store.results import EnqueueRequest

# "Never a hang": far above what any of these needs for inputs this size.
quick = settings(deadline=timedelta(milliseconds=500), max_examples=300)

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=80),
    st.binary(max_size=80),
    st.lists(st.text(max_size=5), max_size=3),
)
field_names = st.sampled_from(
    ["container_id", "account", "force", "publish", "webhook_url", "junk", ""]
)
entry = st.dictionaries(
    st.one_of(field_names.map(str.encode), st.binary(max_size=20)),
    st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60).map(str.encode),
        st.from_regex(r"\A[0-9]{1,40}\Z").map(str.encode),
        st.sampled_from([b"1", b"0", b"yes", b"http://127.0.0.1/", b"https://...", b"x" * 5000]),
    ),
    max_size=6,
)


@quick
@given(fields=entry, policy=st.sampled_from([None, WebhookPolicy(), WebhookPolicy(signing=False)]))
def test_intake_entries(fields: dict[bytes, bytes], policy: WebhookPolicy | None) -> None:
    try:
        req = parse_entry(fields, max_bytes=4096, policy=policy)
    except BadEntryError:
        return
    assert isinstance(req, EnqueueRequest) and req.container_id.isdigit()


@quick
@given(raw=anything)
def test_ids(raw: object) -> None:
    try:
        value = validate_id(raw)
    except InvalidIdError:
        return
    assert value.isascii() and value.isdigit() and len(value) <= 32


@quick
@given(raws=st.lists(anything, max_size=20))
def test_batches(raws: list[object]) -> None:
    try:
        assert len(validate_batch(raws)) == len(raws)
    except InvalidIdError:
        return


@quick
@given(header=st.text(max_size=200), body=st.binary(max_size=50))
def test_signature_headers(header: str, body: bytes) -> None:
    assert verify_signature("secret-0123456789", body, header) in (True, False)


@quick
@given(
    msg_id=st.text(max_size=60),
    stamp=st.one_of(st.text(max_size=30), st.integers().map(str)),
    signature=st.text(max_size=200),
    body=st.binary(max_size=50),
)
def test_standard_signature_headers(msg_id: str, stamp: str, signature: str, body: bytes) -> None:
    headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature}
    assert verify_standard(b"k" * 24, body, headers, now=1.7e9) in (True, False)


@quick
@given(value=st.text(max_size=300))
def test_webhook_secrets(value: str) -> None:
    """WEBHOOK_SECRET's list: its secrets or WebhookKeyError (which never shows one:
    test_signing.py)."""
    try:
        secrets = parse_secrets(value)
    except WebhookKeyError:
        return
    assert secrets and all(s.key for s in secrets)


@quick
@given(
    header=st.builds(
        lambda t, v: f"t={t},v1={v}",
        st.one_of(st.integers(), st.text(string.digits + "e.-", max_size=400)),
        st.text(string.hexdigits, max_size=70),
    )
)
def test_signature_headers_of_the_right_shape(header: str) -> None:
    assert verify_signature("secret-0123456789", b"{}", header) is False


@quick
@given(text=st.text(max_size=120))
def test_retry_schedules(text: str) -> None:
    try:
        delays = parse_retry_schedule(text)
    except ValueError:
        return
    assert delays and all(0 < d <= 86400 for d in delays)


# Every setting, one arbitrary value at a time: the settings or one line naming the variable.
SETTING_NAMES = sorted(Settings.model_fields)
SECRETS = {"threads_access_token", "webhook_secret", "redis_url"}


@quick
@given(name=st.sampled_from(SETTING_NAMES), value=st.text(max_size=60))
def test_settings(name: str, value: str) -> None:
    try:
        load_settings(_env_file=None, **{name: value})
    except SettingsError as exc:
        text = str(exc)
        # One setting ("invalid setting X: ...") or a rule across several, naming them all
        # ("invalid settings X, Y: ...", e.g. JOB_TIMEOUT_SECONDS=1 under HTTP_TIMEOUT_SECONDS).
        assert text.startswith(("invalid setting ", "invalid settings ")) and "\n" not in text
        # Never echo a secret's value.
        if name in SECRETS and len(value) >= 8:
            assert value not in text.replace(name.upper(), "")


usage_names = st.sampled_from(
    ["x-app-usage", "x-business-use-case-usage", "x-fb-ads-insights-throttle", "other"]
)
usage_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(['{"call_count": 1e999}', '{"a": {"b": []}}', "[" * 200, '{"call_count": -5}']),
)


@quick
@given(headers=st.dictionaries(usage_names, usage_values, max_size=4))
def test_usage_headers(headers: dict[str, str]) -> None:
    parse_usage_headers(headers)  # a value or None


@quick
@given(raw=st.dictionaries(st.binary(max_size=20), st.binary(max_size=30), max_size=10))
def test_result_hashes(raw: dict[bytes | str, bytes | str]) -> None:
    assert isinstance(PollResult.from_hash(raw), PollResult)


@quick
@given(
    raw=st.dictionaries(
        st.sampled_from(["checks", "enqueued_at", "throttled", "quota_usage", "final"]),
        st.sampled_from(["inf", "-inf", "nan", "1e999", "-1", "1.5", "", "x", "9" * 400]),
    )
)
def test_result_hashes_with_odd_numbers(raw: dict[str, str]) -> None:
    assert isinstance(PollResult.from_hash(raw), PollResult)  # type: ignore[arg-type]


@quick
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_heartbeats(raw: bytes | str) -> None:
    beat = Beat.from_json(raw)
    assert beat is None or isinstance(beat, Beat)


@quick
@given(text=st.text(max_size=300))
def test_redacted_urls(text: str) -> None:
    assert isinstance(redacted_url(text), str)


# ----- the simulator's own inputs ----------------------------------------------------------

step_words = st.sampled_from(
    ["IN_PROGRESS", "FINISHED", "ERROR:", "STATUS:", "throttle:", "perm:", "slow:", "drop", ":"]
)


@quick
@given(raw=st.one_of(st.text(max_size=300), st.lists(step_words).map("".join)))
def test_simulator_steps(raw: str) -> None:
    try:
        parse_step(raw)
    except StepError:
        return


@quick
@given(text=st.text(alphabet=st.sampled_from("slow:1,0.5e9STATUS-x"), max_size=400))
def test_simulator_scripts(text: str) -> None:
    try:
        assert parse_step_list(text)
    except StepError:
        return


def test_the_simulator_bounds_its_scripts_and_delays() -> None:
    too_long: list[Any] = ["FINISHED"] * (MAX_SCRIPT_STEPS + 1)
    for bad in (too_long, ["slow:1e9"], ["slow:" + "1" * 300], ["slow:1:" * 60 + "FINISHED"]):
        try:
            parse_steps(bad)
        except StepError:
            continue
        raise AssertionError(f"accepted {str(bad)[:60]}")
    assert len(parse_steps(["FINISHED"] * MAX_SCRIPT_STEPS)) == MAX_SCRIPT_STEPS
