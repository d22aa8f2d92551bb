"""WEBHOOK_SECRET: the secret(s) that sign webhook deliveries, and the signature scheme. Pure.

WEBHOOK_SECRET (or WEBHOOK_SECRET_FILE's content) holds one secret, or several separated by
commas or whitespace: every one signs each delivery, so a receiver can be moved to a new secret
while the old one still signs (README "Webhooks": rotation). Each secret is either

- the Standard Webhooks form ``whsec_<base64>``: the HMAC key is the decoded bytes (at least
  24, the specification's minimum), as the ``standardwebhooks`` libraries read it; or
- any other text: the HMAC key is its UTF-8 bytes, the key the ``X-Threads-Poller-Signature``
  scheme always used, so an existing secret signs both schemes unchanged (the specification's
  migration advice). A receiver gives it to the libraries as raw bytes.

No error message and no ``repr`` here shows a secret or a part of one.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum

WHSEC_PREFIX = "whsec_"
# Standard Webhooks: "Random. At least 24 bytes".
MIN_KEY_BYTES = 24
# Rotation needs two; a few more cover an overlap of overlaps. Each costs an HMAC per delivery.
MAX_SECRETS = 8
_SEPARATORS = re.compile(r"[\s,]+")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+$")


class SignatureScheme(StrEnum):
    """WEBHOOK_SIGNATURE_SCHEME: which signature headers a delivery carries."""

    # webhook-id, webhook-timestamp, webhook-signature (https://www.standardwebhooks.com).
    STANDARD = "standard"
    # X-Threads-Poller-Signature: t=<unix seconds>,v1=<hex>: this service's own, before.
    THREADS_POLLER = "threads-poller"
    BOTH = "both"

    @property
    def standard(self) -> bool:
        return self is not SignatureScheme.THREADS_POLLER

    @property
    def threads_poller(self) -> bool:
        return self is not SignatureScheme.STANDARD


class WebhookKeyError(ValueError):
    """A secret that cannot be used; the message names its position, never its value."""


@dataclass(frozen=True, slots=True, repr=False)
class SigningSecret:
    """One active secret. ``text`` is it as written (the old scheme's key, as UTF-8); ``key``
    is the Standard Webhooks HMAC key."""

    text: str
    key: bytes

    @property
    def whsec(self) -> bool:
        return self.text.startswith(WHSEC_PREFIX)

    def __repr__(self) -> str:
        return "SigningSecret('**********')"


def _decode_whsec(rest: str, where: str) -> bytes:
    # The libraries accept it with or without its "=" padding; so do we, but only the
    # standard alphabet (Node's library refuses "-" and "_", Python's would drop them).
    unpadded = rest.rstrip("=")
    if not unpadded or not _BASE64.match(unpadded) or len(unpadded) % 4 == 1:
        raise WebhookKeyError(f"{where} starts with {WHSEC_PREFIX} but the rest is not base64")
    try:
        key = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookKeyError(
            f"{where} starts with {WHSEC_PREFIX} but the rest is not base64"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise WebhookKeyError(
            f"{where} is a {WHSEC_PREFIX} key of {len(key)} bytes; Standard Webhooks keys have "
            f"at least {MIN_KEY_BYTES}"
        )
    return key


def parse_secrets(value: str) -> tuple[SigningSecret, ...]:
    """The secrets of ``value`` in the order written, duplicates dropped."""
    parts = list(dict.fromkeys(p for p in _SEPARATORS.split(value) if p))
    if not parts:
        raise WebhookKeyError("holds no secret (only separators)")
    if len(parts) > MAX_SECRETS:
        raise WebhookKeyError(f"holds {len(parts)} secrets; at most {MAX_SECRETS} at once")
    secrets = []
    for n, text in enumerate(parts, start=1):
        where = f"secret {n} of {len(parts)}" if len(parts) > 1 else "the secret"
        if text.startswith(WHSEC_PREFIX):
            key = _decode_whsec(text[len(WHSEC_PREFIX) :], where)
        else:
            key = text.encode()
        secrets.append(SigningSecret(text, key))
    return tuple(secrets)
