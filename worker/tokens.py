"""Where the worker gets an account's access token. Tokens never travel in job arguments."""

from __future__ import annotations

from typing import Protocol

from pydantic import SecretStr


class TokenSource(Protocol):
    async def token_for(self, account: str | None) -> str | None: ...

    def known_secrets(self) -> list[str]:
        """Every token this source has handed out, for log redaction."""
        ...


class StaticTokenSource:
    """One token for every container: ``THREADS_ACCESS_TOKEN``."""

    def __init__(self, token: SecretStr | None) -> None:
        self._token = token

    async def token_for(self, account: str | None) -> str | None:
        return self._token.get_secret_value() if self._token else None

    def known_secrets(self) -> list[str]:
        return [self._token.get_secret_value()] if self._token else []
