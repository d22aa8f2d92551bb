"""Producers and their scopes: who may ask for what. Pure (no Redis, no worker).

A deployment names its producers in ``PRODUCERS`` (JSON) or ``PRODUCERS_FILE`` (the same JSON in
a file, mode-checked like every secrets file)::

    {"pipeline-a": {"accounts": ["1234", "5678"], "force": false, "publish": true,
                    "webhook": true},
     "backfill":   {"accounts": "*", "force": true}}

``accounts`` is a list of Threads user ids (Instagram accounts: ``"instagram:<id>"``, or
``"instagram"`` for the deployment's Instagram token) or ``"*"`` (any, and none: the
deployment's own ``THREADS_ACCESS_TOKEN``); each flag says whether the producer may set it
(``force``: poll a final container again; ``publish``: auto-publish; ``webhook``: give a
``webhook_url``). A key left out is refused (``accounts``: none, a flag: false): a scope says
what it allows.

Each named producer has its own intake stream, ``{prefix}:intake:{name}``, which only its Redis
user may write (``threads-poller acl producer --producer NAME``), and HTTP API keys may be bound
to it (``API_KEYS`` entries ``NAME=KEY``). Without any configuration there is one producer,
``default``, which may do everything, on ``{prefix}:intake``; a configuration may name
``default`` too, to narrow what the plain intake stream, plain API keys and a client without
``producer=`` may do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_PRODUCER = "default"
# Lowercase, so that a base64 API key is never read as "NAME=KEY" by accident (see
# ``split_scoped_key``); "dead" would be the intake's dead-letter stream ({prefix}:intake:dead).
PRODUCER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RESERVED_NAMES = frozenset({"dead"})
FLAGS = ("force", "publish", "webhook")
MAX_PRODUCERS = 256
MAX_ACCOUNTS = 10_000
# A Threads user id, or an Instagram account (api_client.platforms: "instagram:<id>", or
# "instagram" for the deployment's own Instagram token).
_ACCOUNT = re.compile(r"^(?:[0-9]{1,32}|instagram(?::[0-9]{1,32})?)$")


class ProducersError(ValueError):
    """A producers configuration that cannot be used (the message says where)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What one producer may ask for. ``accounts`` None means any (``"*"``)."""

    name: str
    accounts: frozenset[str] | None = None
    force: bool = True
    publish: bool = True
    webhook: bool = True

    def may_use(self, account: str | None) -> bool:
        """Whether a poll of ``account`` (None: the deployment's own token) is this producer's
        to start."""
        return self.accounts is None or (account is not None and account in self.accounts)

    def refusals(
        self,
        *,
        account: str | None,
        force: bool = False,
        publish: bool = False,
        webhook: bool = False,
    ) -> list[str]:
        """What of a request this producer may not ask for ([] when all is allowed)."""
        out = []
        if not self.may_use(account):
            out.append(f"account {account}" if account else "no account (the default token)")
        for flag, asked, allowed in (
            ("force", force, self.force),
            ("publish", publish, self.publish),
            ("webhook_url", webhook, self.webhook),
        ):
            if asked and not allowed:
                out.append(flag)
        return out

    def lua_accounts(self) -> str:
        """``accounts`` as enqueue.lua reads it: ``*``, or ``,id,id,`` (no id holds a comma)."""
        if self.accounts is None:
            return "*"
        return "," + ",".join(sorted(self.accounts)) + ","


# The implicit producer of a deployment that configures none: everything, as before scopes.
UNRESTRICTED = Scope(DEFAULT_PRODUCER)


def refusal_message(scope: Scope, refused: Iterable[str]) -> str:
    return f"producer {scope.name!r} may not use: {', '.join(refused)}"


@dataclass(frozen=True, slots=True)
class Producers:
    """Every producer of a deployment, ``default`` included."""

    scopes: Mapping[str, Scope]

    @classmethod
    def unrestricted(cls) -> Producers:
        return cls({DEFAULT_PRODUCER: UNRESTRICTED})

    @property
    def default(self) -> Scope:
        return self.scopes[DEFAULT_PRODUCER]

    @property
    def named(self) -> list[Scope]:
        """The producers with a stream of their own (all but ``default``), by name."""
        return [self.scopes[n] for n in sorted(self.scopes) if n != DEFAULT_PRODUCER]

    def get(self, name: str | None) -> Scope:
        """The scope of ``name`` (None: ``default``); ProducersError for an unknown name."""
        if name is None:
            return self.default
        scope = self.scopes.get(name)
        if scope is None:
            known = ", ".join(sorted(self.scopes))
            raise ProducersError(f"no producer named {name[:40]!r} (configured: {known})")
        return scope


def check_name(name: object) -> str:
    if not isinstance(name, str) or not PRODUCER_NAME.match(name):
        shown = repr(name)[:40]
        raise ProducersError(
            f"producer name {shown}: 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter"
        )
    if name in RESERVED_NAMES:
        raise ProducersError(f"producer name {name!r} is reserved")
    return name


def _scope(name: str, raw: object) -> Scope:
    if not isinstance(raw, dict):
        raise ProducersError(f"producer {name!r}: expected an object")
    unknown = sorted(set(raw) - {"accounts", *FLAGS})
    if unknown:
        raise ProducersError(
            f"producer {name!r}: unknown key(s) {', '.join(map(str, unknown))}; expected "
            "accounts, force, publish, webhook"
        )
    accounts_raw = raw.get("accounts", [])
    accounts: frozenset[str] | None
    if accounts_raw == "*":
        accounts = None
    elif isinstance(accounts_raw, list) and len(accounts_raw) <= MAX_ACCOUNTS:
        if not all(isinstance(a, str) and _ACCOUNT.match(a) for a in accounts_raw):
            raise ProducersError(
                f"producer {name!r}: accounts are Threads user ids (strings of digits) or "
                '"instagram:<id>"'
            )
        accounts = frozenset(accounts_raw)
    else:
        raise ProducersError(
            f'producer {name!r}: accounts is a list of user ids (at most {MAX_ACCOUNTS}) or "*"'
        )
    flags = {}
    for flag in FLAGS:
        value = raw.get(flag, False)
        if not isinstance(value, bool):
            raise ProducersError(f"producer {name!r}: {flag} is true or false")
        flags[flag] = value
    return Scope(name, accounts, **flags)


def parse_producers(text: str | None) -> Producers:
    """The producers of a ``PRODUCERS`` value (None or blank: the one unrestricted default)."""
    if text is None or not text.strip():
        return Producers.unrestricted()
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ProducersError(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(raw, dict):
        raise ProducersError('expected a JSON object {"name": {"accounts": [...], ...}}')
    if len(raw) > MAX_PRODUCERS:
        raise ProducersError(f"at most {MAX_PRODUCERS} producers")
    scopes = {check_name(name): _scope(name, value) for name, value in raw.items()}
    # Not named: the default stream and plain keys keep today's powers.
    scopes.setdefault(DEFAULT_PRODUCER, UNRESTRICTED)
    return Producers(scopes)


def split_scoped_key(item: str, names: Iterable[str]) -> tuple[str | None, str]:
    """An ``API_KEYS`` item: ``NAME=KEY`` (a key bound to producer NAME) or a plain key.

    ``NAME=`` counts only when NAME has a producer name's shape (lowercase); such a NAME that
    is not configured is refused (ProducersError) rather than taken for part of a plain key:
    a misspelt producer must not turn its key into an operator's. Without any named producer
    every item is a plain key, as before scopes."""
    known = set(names)
    name, sep, key = item.partition("=")
    if not sep or not known - {DEFAULT_PRODUCER} or not PRODUCER_NAME.match(name):
        return None, item
    if name == DEFAULT_PRODUCER:
        return None, key  # "default=KEY" is a plain key
    if name not in known:
        raise ProducersError(
            f"a key is bound to producer {name!r}, which is not configured (PRODUCERS)"
        )
    return name, key
