"""threads-poller for producers and readers: the public surface is what this module exports.

The client
    PollerClient      enqueue container ids, read and wait for their results (one deployment)
    EnqueueOutcome    what an enqueue did: enqueued | restarted | duplicate | final
    PollResult        one container's stored state
    HistoryEvent      one entry of a container's history (PollerClient.history)
    WebhookPolicy     where a webhook URL may point (the SSRF guard's allowlist), for a client
                      built without settings

States
    State             every status a result can have
    FINAL_STATES      the statuses after which a poll is over
    is_final          whether a status is final
    is_success        whether a status is a final success (FINISHED, PUBLISHED)

Errors
    PollerError       the root of threads-poller's own errors
    InvalidIdError    a malformed id, account or webhook URL was refused; nothing was written
    ScopeError        a producer asked for what its scope does not allow (``refused`` says
                      what; ``outcomes`` what the call did, when Redis refused part of it)

Module functions (one ``PollerClient.from_settings(settings, redis)`` per call)
    enqueue, enqueue_many, get_result, get_history, wait_for

Importing ``worker`` does not load the worker's runtime (``worker.runtime``, ``worker.jobs``,
``worker.ops``); everything else under ``worker.`` is internal and may change.
"""

from worker.client.client import EnqueueOutcome, PollerClient
from worker.client.producer import enqueue, enqueue_many
from worker.client.reader import get_history, get_result, wait_for
from worker.core.errors import InvalidIdError, PollerError, ScopeError
from worker.core.history import HistoryEvent
from worker.core.result import PollResult
from worker.core.states import FINAL_STATES, State, is_final, is_success
from worker.core.targets import WebhookPolicy

__all__ = [
    "FINAL_STATES",
    "EnqueueOutcome",
    "HistoryEvent",
    "InvalidIdError",
    "PollResult",
    "PollerClient",
    "PollerError",
    "ScopeError",
    "State",
    "WebhookPolicy",
    "enqueue",
    "enqueue_many",
    "get_history",
    "get_result",
    "is_final",
    "is_success",
    "wait_for",
]
