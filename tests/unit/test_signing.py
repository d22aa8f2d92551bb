"""Webhook signatures (worker/core/signing.py) and WEBHOOK_SECRET's secrets
(config/webhook_keys.py). Pure: the published test vector, the maintained Python library
signing and verifying the same bytes, the older scheme byte for byte as before. Real deliveries
verified by the libraries of Python and Node: tests/integration/test_standard_webhooks.py.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from config import SettingsError, load_settings
from config.webhook_keys import (
    MAX_SECRETS,
    SignatureScheme,
    WebhookKeyError,
    parse_secrets,
)
from worker.core.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    THREADS_POLLER_SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    message_id,
    signature_headers,
    standard_headers,
    standard_signature,
    verify_standard,
    verify_threads_poller,
)

# The Standard Webhooks libraries' own test vector (libraries/python/tests/test_webhooks.py,
# test_sign_function; the same in the JavaScript library's tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD = "an-older-secret-0123456789"


def test_the_published_test_vector() -> None:
    (secret,) = parse_secrets(VECTOR_SECRET)
    assert secret.key == base64.b64decode(VECTOR_SECRET.removeprefix("whsec_"))
    got = standard_signature(secret.key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert got == VECTOR_SIGNATURE
    headers = standard_headers([secret], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        ID_HEADER: VECTOR_ID,
        TIMESTAMP_HEADER: str(VECTOR_TIMESTAMP),
        SIGNATURE_HEADER: VECTOR_SIGNATURE,
    }
    assert verify_standard(secret.key, VECTOR_BODY, headers, now=VECTOR_TIMESTAMP + 299)
    assert not verify_standard(secret.key, VECTOR_BODY, headers, now=VECTOR_TIMESTAMP + 301)
    assert not verify_standard(secret.key, VECTOR_BODY + b" ", headers, now=VECTOR_TIMESTAMP)


def test_the_padding_of_a_whsec_key_is_optional_as_in_the_libraries() -> None:
    padded = "whsec_" + base64.b64encode(b"k" * 25).decode()
    assert padded.endswith("=")
    assert parse_secrets(padded)[0].key == parse_secrets(padded.rstrip("="))[0].key == b"k" * 25


def test_the_maintained_library_verifies_what_we_sign_with_each_active_secret() -> None:
    """Two secrets active: the header holds both signatures, and a receiver that knows either
    one (the library, each form of secret as its README says) verifies the delivery."""
    secrets = parse_secrets(f"{NEW}, {OLD}")
    body = b'{"container_id":"1","status":"FINISHED"}'
    now = int(datetime.now(UTC).timestamp())
    headers = signature_headers(SignatureScheme.STANDARD, secrets, "tp:webhook:1:ab12", now, body)
    assert set(headers) == {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}
    assert headers[ID_HEADER] == "tp:webhook:1:ab12"
    assert len(headers[SIGNATURE_HEADER].split(" ")) == 2
    assert Webhook(NEW).verify(body, headers)["status"] == "FINISHED"
    assert Webhook(OLD.encode()).verify(body, headers)["status"] == "FINISHED"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body + b" ", headers)
    # And ours agrees with the library on what the library signs.
    signed = Webhook(NEW).sign("msg_1", datetime.fromtimestamp(now, UTC), body)
    assert signed == standard_signature(secrets[0].key, "msg_1", now, body)


def test_the_message_id_has_no_full_stop() -> None:
    """The specification: the id must not hold a "." ("<id>.<timestamp>." stays unambiguous).
    Only a KEY_PREFIX with one could put it there."""
    assert message_id("tp:webhook:17:ab12") == "tp:webhook:17:ab12"
    assert message_id("tp.eu:webhook:17:ab12") == "tp_eu:webhook:17:ab12"
    (secret,) = parse_secrets(NEW)
    headers = signature_headers(SignatureScheme.STANDARD, [secret], "a.b:webhook:1:f", 10, b"{}")
    assert headers[ID_HEADER] == "a_b:webhook:1:f"


def test_the_schemes_choose_the_headers() -> None:
    secrets = parse_secrets(NEW)
    std = signature_headers(SignatureScheme.STANDARD, secrets, "d", 10, b"{}")
    old = signature_headers(SignatureScheme.THREADS_POLLER, secrets, "d", 10, b"{}")
    both = signature_headers(SignatureScheme.BOTH, secrets, "d", 10, b"{}")
    assert set(std) == {ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}
    assert set(old) == {THREADS_POLLER_SIGNATURE_HEADER}
    assert both == {**std, **old}


def test_the_older_scheme_is_byte_for_byte_what_it_was() -> None:
    """Receivers written for X-Threads-Poller-Signature keep working: the same key (the
    secret's text, whsec_ or not) and the same header for one secret."""
    secret = "whsec-test-0123456789"
    (parsed,) = parse_secrets(secret)
    header = signature_headers(
        SignatureScheme.THREADS_POLLER, [parsed], "d", 1700000000, b'{"a":1}'
    )
    assert header[THREADS_POLLER_SIGNATURE_HEADER] == (
        "t=1700000000,v1=ba8ec7f38c4e076a99176a1bf98ae9f2f3f4e18412b46a5913ddcf5685932c6a"
    )
    # Two secrets: one v1 each, and either verifies.
    two = parse_secrets(f"{NEW} {OLD}")
    value = signature_headers(SignatureScheme.THREADS_POLLER, two, "d", 1700000000, b"{}")[
        THREADS_POLLER_SIGNATURE_HEADER
    ]
    assert value.count("v1=") == 2
    for text in (NEW, OLD):
        assert verify_threads_poller(text, b"{}", value, now=1700000010)
    assert not verify_threads_poller("other-secret", b"{}", value, now=1700000010)
    assert not verify_threads_poller(NEW, b"{}", value, now=1700000400)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (OLD, 1),
        (f"{NEW},{OLD}", 2),
        (f" {NEW} ,\n{OLD}\n", 2),
        (f"{NEW}\t{OLD} {OLD}", 2),  # a duplicate signs once
    ],
)
def test_secrets_are_separated_by_commas_or_whitespace(value: str, count: int) -> None:
    secrets = parse_secrets(value)
    assert len(secrets) == count
    assert secrets[0].text == value.split(",")[0].split()[0]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (" , ", "no secret"),
        ("whsec_", "not base64"),
        ("whsec_abc-_defghijklmnopqrstuvwxyz0123", "not base64"),
        ("whsec_" + base64.b64encode(b"s" * 16).decode(), "16 bytes"),
        (f"{OLD},whsec_!!", "secret 2 of 2"),
        (",".join(f"s{n}-0123456789" for n in range(MAX_SECRETS + 1)), "at most"),
    ],
)
def test_a_bad_secret_is_named_by_position_never_shown(value: str, why: str) -> None:
    with pytest.raises(WebhookKeyError, match=why) as info:
        parse_secrets(value)
    for part in value.replace(",", " ").split():
        core = part.removeprefix("whsec_")
        assert len(core) < 4 or core not in str(info.value)


def test_settings_refuse_a_bad_secret_without_echoing_it(tmp_path: Path) -> None:
    bad = "whsec_" + base64.b64encode(b"short-key").decode()
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, webhook_secret=bad)
    text = str(info.value)
    assert text.startswith("invalid setting WEBHOOK_SECRET:") and "9 bytes" in text, text
    assert bad not in text and bad[6:] not in text
    path = tmp_path / "hook-secret"
    path.write_text(bad + "\n")
    path.chmod(0o600)
    with pytest.raises(SettingsError, match="invalid setting WEBHOOK_SECRET_FILE:"):
        load_settings(_env_file=None, webhook_secret_file=path)


def test_the_file_variant_holds_several_secrets_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "hook-secrets"
    path.write_text(f"{NEW}\n{OLD}\n")
    path.chmod(0o600)
    s = load_settings(_env_file=None, webhook_secret_file=path)
    assert [x.text for x in s.webhook_signing_secrets()] == [NEW, OLD]
    assert s.webhook_signature_scheme is SignatureScheme.STANDARD
    # Each secret alone is redacted from logs too, not only the whole value.
    assert {NEW, OLD} <= set(s.secrets())
    for shown in (repr(s), str(s), repr(s.webhook_signing_secrets())):
        assert NEW not in shown and OLD not in shown and NEW[6:] not in shown


def test_the_scheme_setting() -> None:
    s = load_settings(_env_file=None, webhook_signature_scheme="threads-poller")
    assert s.webhook_signature_scheme is SignatureScheme.THREADS_POLLER
    with pytest.raises(SettingsError, match="WEBHOOK_SIGNATURE_SCHEME"):
        load_settings(_env_file=None, webhook_signature_scheme="svix")


def test_a_copy_with_another_secret_signs_with_that_one() -> None:
    """model_copy runs no validator: the secrets are read from the value each time."""
    s = load_settings(_env_file=None, webhook_secret=NEW)
    other = s.model_copy(update={"webhook_secret": SecretStr(OLD)})
    assert [x.text for x in other.webhook_signing_secrets()] == [OLD]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {ID_HEADER: "x", TIMESTAMP_HEADER: "10"},
        {ID_HEADER: "x", TIMESTAMP_HEADER: "1e3", SIGNATURE_HEADER: "v1,AAAA"},
        {ID_HEADER: "x", TIMESTAMP_HEADER: "9" * 400, SIGNATURE_HEADER: "v1,AAAA"},
        {ID_HEADER: "\ud800", TIMESTAMP_HEADER: "10", SIGNATURE_HEADER: "v1,é"},
    ],
)
def test_verify_standard_refuses_junk_without_raising(headers: dict[str, str]) -> None:
    assert verify_standard(b"k" * 24, b"{}", headers, now=10) is False
