"""Schemathesis hooks of tests/integration/test_schemathesis.py (``SCHEMATHESIS_HOOKS``).

Both change a generated case just before it is sent; Schemathesis then checks the case again
(valid or not by the document), so the checks judge what was actually sent.

- Webhook URLs: generated bodies name URLs at random hosts. Every one the server would take (so
  look up in DNS at enqueue, and have a worker deliver to) is sent as the test's own receiver
  instead (``TP_SCHEMATHESIS_RECEIVER``, on loopback and allowlisted): no generated request
  makes the server reach anything but this machine. A URL the server refuses by its syntax is
  left as generated, so that case stays what it was.
- The rule of ``POST /v1/containers`` JSON Schema cannot state: a carousel's children are
  distinct ids once trimmed, and the parent is not among them (the document says so in words).
  A body that breaks only that rule is refused (422) though the schema allows it; such children
  are given ids of their own.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import schemathesis

from worker.core.errors import InvalidIdError
from worker.core.targets import parse_target

RECEIVER_ENV = "TP_SCHEMATHESIS_RECEIVER"


def confined(url: Any, receiver: str) -> Any:
    """``url`` if the server refuses it by its syntax, else ``receiver``."""
    try:
        parse_target(url)
    except InvalidIdError:
        return url
    return receiver


def carousel_apart(body: dict[str, Any]) -> None:
    """A carousel's children that are the same id once trimmed (the server strips whitespace),
    or the parent's, get ids of their own."""
    parent, children = body.get("container_id"), body.get("children")
    if not (isinstance(parent, str) and isinstance(children, list)):
        return
    texts = [c.strip() for c in children if isinstance(c, str)]
    fresh = (n for n in (str(i) for i in itertools.count(1)) if n not in texts)
    seen = {parent.strip()}
    for i, child in enumerate(children):
        if isinstance(child, str):
            if child.strip() in seen:
                children[i] = child = next(fresh)
            seen.add(child.strip())


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    if "webhook_url" in body:
        url = confined(body["webhook_url"], os.environ[RECEIVER_ENV])
        if url is not body["webhook_url"]:
            body["webhook_url"] = url
    carousel_apart(body)
