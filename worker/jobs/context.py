"""The jobs' typed context: what every check and webhook delivery run needs.

Built once per worker process (``worker.runtime.app``) and shared by the check job
(``worker.jobs.check``) and the delivery job (``worker.jobs.webhook``). It lives apart from both
so that neither job imports the other for it (the delivery job once imported the check job for
this type; pyproject.toml's jobs contract keeps such an import out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from api_client.client import ThreadsClient
from config import Settings
from worker.core.planner import Policy
from worker.core.targets import WebhookPolicy
from worker.jobs.tokens import TokenSource
from worker.store.accounts import AccountStore
from worker.store.queue import JobQueue
from worker.store.replicas import Replicas
from worker.store.results import ResultStore


@dataclass
class PollerContext:
    """What every run needs; built once per worker process (``worker.runtime.app``)."""

    settings: Settings
    store: ResultStore
    # The checks' queue, and the webhook deliveries' (claimed apart: worker.store.queue).
    queue: JobQueue
    deliveries: JobQueue
    accounts: AccountStore
    # One Graph API client per platform (api_client.platforms), by name: a poll's platform
    # picks its client, whose field names and edges are that platform's.
    clients: Mapping[str, ThreadsClient]
    tokens: TokenSource
    policy: Policy
    # The deliveries' own session (the SSRF guard's resolver) and the policy it enforces.
    webhook_session: aiohttp.ClientSession
    webhook_policy: WebhookPolicy
    # How many replicas must hold a publish claim before the call (worker.store.replicas).
    replicas: Replicas
