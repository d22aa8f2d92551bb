"""Deliveries verified as a receiver would: with the maintained ``standardwebhooks`` library."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


def library_for(secret: str) -> Webhook:
    """The library's verifier for one of our secrets: ``whsec_...`` as written, any other text
    as raw bytes (README "Webhooks": how a receiver gives the library each form)."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


def verified(secret: str, body: bytes, headers: Mapping[str, str]) -> Any:
    """The JSON body once the library has verified it (raises WebhookVerificationError)."""
    return library_for(secret).verify(body, dict(headers))


def verifies(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    try:
        verified(secret, body, headers)
    except WebhookVerificationError:
        return False
    return True
