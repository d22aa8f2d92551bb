"""threads-poller's worker side: arq jobs, the Redis result store, producers and readers."""

from worker.client.producer import EnqueueOutcome, enqueue, enqueue_many
from worker.client.reader import get_result, wait_for
from worker.core.result import PollResult
from worker.core.states import FINAL_STATES, State, is_final, is_success

__all__ = [
    "FINAL_STATES",
    "EnqueueOutcome",
    "PollResult",
    "State",
    "enqueue",
    "enqueue_many",
    "get_result",
    "is_final",
    "is_success",
    "wait_for",
]
