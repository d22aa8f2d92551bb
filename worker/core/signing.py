"""Webhook signatures: Standard Webhooks', and this service's older own scheme. Pure.

Standard Webhooks (https://www.standardwebhooks.com, specification 1.0.0), what deliveries
carry by default:

    webhook-id: <the delivery id>
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")> [v1,... ...]

one ``v1,`` signature per active secret, space-separated (rotation). The id is the same on
every attempt and on a replay of the dead letter (it is the receiver's idempotency key: the
specification's "the same when the same webhook is being resent"); the timestamp is the
attempt's, so a replay is signed afresh.

The older scheme (WEBHOOK_SIGNATURE_SCHEME=threads-poller or both):

    X-Threads-Poller-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

keyed by each secret's text as written; one ``v1=`` per active secret.

Times come from the caller (the delivery job's view of Redis' clock; ``now`` of a verifier).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from config.webhook_keys import SignatureScheme, SigningSecret

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
THREADS_POLLER_SIGNATURE_HEADER = "X-Threads-Poller-Signature"
# What the specification's libraries accept around their clock (either way).
DEFAULT_TOLERANCE_SECONDS = 300


def message_id(delivery_id: str) -> str:
    """The ``webhook-id`` of a delivery: its id (the body's ``delivery_id``), with any "."
    written "_": the specification asks for ids without one (a "." in the id would make
    "<id>.<timestamp>." ambiguous). Only a KEY_PREFIX with a "." puts one there; container ids
    are digits and generations hex."""
    return delivery_id.replace(".", "_")


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def standard_headers(
    secrets: Sequence[SigningSecret], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(
            standard_signature(s.key, msg_id, timestamp, body) for s in secrets
        ),
    }


def verify_standard(
    key: bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """For receivers without the libraries (the demo): True if one of the signatures is
    ``key``'s over these headers and body, and the timestamp is within the tolerance."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get(ID_HEADER, "")
    stamp = lower.get(TIMESTAMP_HEADER, "")
    given = lower.get(SIGNATURE_HEADER, "")
    if not (msg_id and given and _unix_seconds(stamp)):
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_seconds:
        return False
    try:
        expected = standard_signature(key, msg_id, timestamp, body)
    except UnicodeEncodeError:  # an id no sender could have signed (a lone surrogate)
        return False
    # Every entry is compared (no early exit on the first match: the time does not say which).
    matches = [_same(expected, sig) for sig in given.split(" ")]
    return any(matches)


def _unix_seconds(text: str) -> bool:
    # Digits only, and few enough to subtract from a float clock (no OverflowError).
    return 0 < len(text) <= 12 and text.isascii() and text.isdigit()


def _same(expected: str, given: str) -> bool:
    # compare_digest takes ASCII str only; an expected signature always is.
    return given.isascii() and hmac.compare_digest(expected, given)


def threads_poller_signature(secrets: Sequence[str], body: bytes, timestamp: int) -> str:
    """``t=<timestamp>,v1=<hex>[,v1=<hex>...]``: one ``v1`` per secret (keyed by its text)."""
    macs = (
        hmac.new(s.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        for s in secrets
    )
    return ",".join([f"t={timestamp}", *(f"v1={m}" for m in macs)])


def verify_threads_poller(
    secret: str,
    body: bytes,
    header: str,
    *,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True if one ``v1`` of ``header`` is ``secret``'s over ``body`` and ``t`` is recent."""
    timestamp: int | None = None
    given: list[str] = []
    for item in header.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            return False
        if name == "t":
            if not _unix_seconds(value) or timestamp is not None:
                return False
            timestamp = int(value)
        elif name == "v1":
            given.append(value)
    if timestamp is None or not given or abs(now - timestamp) > tolerance_seconds:
        return False
    expected = threads_poller_signature([secret], body, timestamp).split("v1=", 1)[1]
    matches = [_same(expected, g) for g in given]
    return any(matches)


def signature_headers(
    scheme: SignatureScheme,
    secrets: Sequence[SigningSecret],
    delivery_id: str,
    timestamp: int,
    body: bytes,
) -> dict[str, str]:
    """The signature headers of one attempt under ``scheme``."""
    headers: dict[str, str] = {}
    if scheme.standard:
        headers.update(standard_headers(secrets, message_id(delivery_id), timestamp, body))
    if scheme.threads_poller:
        headers[THREADS_POLLER_SIGNATURE_HEADER] = threads_poller_signature(
            [s.text for s in secrets], body, timestamp
        )
    return headers
